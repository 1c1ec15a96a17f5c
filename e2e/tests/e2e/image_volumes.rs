//! Image volumes (KEP-4639, GA in kubelet 1.36): a `Mount` naming an image
//! mounts that image's rootfs, or a sub-directory of it, read-only. Through
//! the real berthd and runc, checked from inside the container, in
//! ContainerStatus and against RemoveImage.

use berth_e2e::cri::{self, ContainerStatusRequest, ImageSpec, RemoveImageRequest};
use berth_e2e::world::{World, can_run_here};

fn image_mount(image: &str, container_path: &str, sub_path: &str) -> cri::Mount {
    cri::Mount {
        container_path: container_path.into(),
        readonly: true,
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        image_sub_path: sub_path.into(),
        ..Default::default()
    }
}

async fn image_id(w: &World, name: &str) -> Option<String> {
    let mut images = w.berthd().images().await;
    berth_e2e::image_status(&mut images, name)
        .await
        .map(|i| i.id)
}

async fn remove_image(w: &World, name: &str) -> Result<(), tonic::Status> {
    w.berthd()
        .images()
        .await
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: name.into(),
                ..Default::default()
            }),
        })
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_mounts_read_only_whole_or_by_sub_path_and_stays_while_used() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("imgvol").await;
    // layered: three layers under one overlay; busybox: one layer.
    let layered = w.pull_fixture("layered").await;
    let layered_id = image_id(&w, &layered).await.unwrap();
    let busybox = w.image.clone();
    let pod = w.pod("imgvol").await;
    let script = "cat /vol/data/hello /vol/etc/hostname; grep -c berth /bbetc/passwd; \
                  touch /vol/new 2>/dev/null || echo read-only; sleep 600";
    let mut config = w.container("imgvol-c", script);
    config.mounts = vec![
        image_mount(&layered, "/vol", ""),
        image_mount(&busybox, "/bbetc", "etc"),
    ];
    let id = w.run(&pod, config).await;
    let log = w.logs.path().join("imgvol").join("imgvol-c.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let lines = loop {
        let lines: Vec<String> = World::log_text(&log).into_iter().map(|(_, t)| t).collect();
        if lines.len() >= 4 {
            break lines;
        }
        assert!(std::time::Instant::now() < deadline, "{lines:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(lines, ["hello", "layered", "1", "read-only"]);

    // The status names each image by the name asked and its ID.
    let status = w
        .client
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let by_path = |path: &str| {
        status
            .mounts
            .iter()
            .find(|m| m.container_path == path)
            .unwrap_or_else(|| panic!("no mount {path}: {:?}", status.mounts))
            .clone()
    };
    let vol = by_path("/vol");
    let spec = vol.image.unwrap();
    assert_eq!(
        (spec.image.as_str(), spec.image_ref.as_str()),
        (layered.as_str(), layered_id.as_str())
    );
    assert!(vol.readonly);
    assert_eq!(by_path("/bbetc").image_sub_path, "etc");

    // In use: RemoveImage refuses, and the image stays.
    let err = remove_image(&w, &layered).await.unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
    assert!(image_id(&w, &layered).await.is_some());

    // Bad requests name the field and leave nothing reserved.
    let mut bad = w.container("imgvol-rw", "true");
    let mut writable = image_mount(&layered, "/vol", "");
    writable.readonly = false;
    bad.mounts = vec![writable];
    let err = w.create(&pod, bad.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("mounts[0].readonly"), "{err:?}");
    bad.mounts = vec![image_mount(&layered, "/vol", "no/such/dir")];
    let err = w.create(&pod, bad.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("mounts[0].image_sub_path"),
        "{err:?}"
    );
    assert!(err.message().contains("no/such/dir"), "{err:?}");
    bad.mounts = vec![image_mount(&layered, "/vol", "../etc")];
    let err = w.create(&pod, bad.clone()).await.unwrap_err();
    assert!(
        err.message().contains("mounts[0].image_sub_path"),
        "{err:?}"
    );
    bad.mounts = vec![image_mount("127.0.0.1:1/berth/never-pulled:1", "/vol", "")];
    let err = w.create(&pod, bad.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    // The name was freed each time: the good config goes through.
    bad.mounts = vec![image_mount(&layered, "/vol", "data")];
    let ok = w.create(&pod, bad).await.expect("create after refusals");
    w.remove(&ok).await;

    // Once no container uses it, the image goes.
    w.stop(&id, 0).await;
    w.remove(&id).await;
    remove_image(&w, &layered)
        .await
        .expect("RemoveImage once unused");
    assert!(image_id(&w, &layered).await.is_none());
    let left = berth_e2e::mounts_under(w.paths().run_root().as_path());
    assert!(
        left.iter()
            .all(|m| !m.to_string_lossy().contains("image-volumes")),
        "{left:?}"
    );
    w.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_racing_remove_image_ends_one_way_or_the_other() {
    if !can_run_here() {
        return;
    }
    let mut w = World::new("imgrace").await;
    let pod = w.pod("imgrace").await;
    for round in 0..3 {
        let layered = w.pull_fixture("layered").await;
        let mut config = w.container(&format!("imgrace-c{round}"), "sleep 600");
        config.mounts = vec![image_mount(&layered, "/vol", "")];
        let mut client = w.client.clone();
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(w.pod_config("imgrace")),
        };
        let create = async move {
            client
                .create_container(request)
                .await
                .map(|r| r.into_inner().container_id)
        };
        let (created, removed) = tokio::join!(create, remove_image(&w, &layered));
        match (created, removed) {
            // The create pinned it first: RemoveImage saw a user.
            (Ok(id), Err(_)) => {
                assert!(image_id(&w, &layered).await.is_some());
                w.remove(&id).await;
            }
            // The image went first: nothing to mount.
            (Err(err), Ok(())) => assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}"),
            (created, removed) => panic!("round {round}: {created:?} and {removed:?}"),
        }
        let _ = remove_image(&w, &layered).await;
    }
    w.remove_pod(&pod).await;
}
