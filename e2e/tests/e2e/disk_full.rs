//! A full disk under berthd's root (a small tmpfs) during a pull and a
//! CreateContainer: a clear error, nothing half written left visible, and
//! the same request succeeds once there is room again.

use std::io::Write;
use std::path::Path;

use berth_e2e::cri::{ImageSpec, ListImagesRequest, PullImageRequest};
use berth_e2e::fault_registry::{Auth, FaultRegistry};
use berth_e2e::world::{self, World};
use berth_e2e::{Berthd, Options, Paths, registry};

const MIB: u64 = 1024 * 1024;

/// Fills the filesystem holding `dir` with one file until it is full.
fn fill(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        if let Err(err) = file.write_all(&block) {
            assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC), "{err}");
            break;
        }
    }
    // The rest of a partly written block, byte by byte is too slow: 4 KiB pages.
    while file.write_all(&block[..4096]).is_ok() {}
    path
}

fn no_space(status: &tonic::Status) -> bool {
    status.message().contains("No space left on device")
}

#[tokio::test]
async fn a_pull_onto_a_full_disk_fails_cleanly_and_succeeds_with_room() {
    if !world::can_run_here() {
        return;
    }
    let fault = FaultRegistry::start(registry::fixtures(), Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("registries.conf");
    std::fs::write(&conf, berth_e2e::registry::insecure_conf(&fault.host())).unwrap();
    let paths = Paths::create();
    // Room for the store's dirs and records, not for busybox's layer.
    paths.mount_root_tmpfs(MIB);
    let berthd = Berthd::start_in(
        paths,
        Options {
            config: format!("[image]\nregistries_config = \"{}\"\n", conf.display()),
            ..Options::default()
        },
    )
    .await;
    let mut images = berthd.images().await;
    let request = PullImageRequest {
        image: Some(ImageSpec {
            image: fault.image("busybox"),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = images.pull_image(request.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(no_space(&err), "{}", err.message());
    let listed = images
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(listed.is_empty(), "{listed:?}");
    let store = berthd.paths().root().join("images");
    for sub in ["images", "layers", "tmp"] {
        assert_eq!(
            berth_e2e::entries(&store.join(sub)),
            Vec::<String>::new(),
            "{sub}"
        );
    }

    berthd.paths().resize_root_tmpfs(64 * MIB);
    images.pull_image(request).await.unwrap();
}

#[tokio::test]
async fn a_create_onto_a_full_disk_fails_cleanly_and_succeeds_with_room() {
    if !world::can_run_here() {
        return;
    }
    let paths = Paths::create();
    paths.mount_root_tmpfs(64 * MIB);
    let mut world = World::in_paths("diskfull", "", paths).await;
    let pod = world.pod("diskfull").await;
    let root = world.paths().root();
    let filler = fill(&root);

    let config = world.container("app", "sleep 60");
    let err = world.create(&pod, config.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(no_space(&err), "{}", err.message());
    let listed = berth_e2e::container_ids(&mut world.client).await;
    assert!(listed.is_empty(), "{listed:?}");
    let run_root = world.paths().run_root();
    assert_eq!(
        berth_e2e::entries(&run_root.join("containers")),
        Vec::<String>::new()
    );
    assert_eq!(
        berth_e2e::entries(&root.join("containers/state")),
        Vec::<String>::new()
    );
    let records: Vec<String> = berth_e2e::entries(&root.join("containers/records"));
    assert!(records.is_empty(), "{records:?}");
    assert!(
        berth_e2e::mounts_under(&run_root.join("containers")).is_empty(),
        "rootfs left mounted"
    );

    // Room again: the kubelet's retry of the same request succeeds.
    std::fs::remove_file(filler).unwrap();
    let id = world.run(&pod, config).await;
    world.stop(&id, 0).await;
    world.remove(&id).await;
    world.remove_pod(&pod).await;
}
