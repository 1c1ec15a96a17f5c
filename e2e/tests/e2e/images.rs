//! ImageService against a real registry (Debian's docker-registry on
//! loopback) and the real berthd binary.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_e2e::cri::image_service_client::ImageServiceClient;
use berth_e2e::cri::{
    AuthConfig, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest,
    ImageStatusResponse, ListImagesRequest, PullImageRequest, RemoveImageRequest,
};
use berth_e2e::fault_registry::{self, Fault, FaultRegistry};
use berth_e2e::registry::{self, Registry, Security};
use berth_e2e::{Berthd, Options, can_run};
use tonic::Code;
use tonic::transport::Channel;

fn ready() -> bool {
    can_run(
        berth_e2e::is_root() && registry::available(),
        "root (layer owners, devices, trusted xattrs) and docker-registry, skopeo, jq, zstd, openssl, htpasswd",
    )
}

fn spec(name: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: name.to_string(),
        ..Default::default()
    })
}

/// berthd with a registries.conf holding `registries` (TOML).
async fn start_berthd(registries: &str) -> (Berthd, tempfile::TempDir) {
    Berthd::start_with_registries(registries, "").await
}

async fn pull(
    client: &mut ImageServiceClient<Channel>,
    name: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    client
        .pull_image(PullImageRequest {
            image: spec(name),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(
    client: &mut ImageServiceClient<Channel>,
    name: &str,
    verbose: bool,
) -> ImageStatusResponse {
    client
        .image_status(ImageStatusRequest {
            image: spec(name),
            verbose,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn list(client: &mut ImageServiceClient<Channel>) -> Vec<String> {
    client
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images
        .into_iter()
        .map(|i| i.id)
        .collect()
}

async fn remove(client: &mut ImageServiceClient<Channel>, name: &str) {
    client
        .remove_image(RemoveImageRequest { image: spec(name) })
        .await
        .unwrap();
}

/// The layer dirs (top-most first) from verbose ImageStatus.
async fn layer_dirs(client: &mut ImageServiceClient<Channel>, name: &str) -> Vec<PathBuf> {
    let resp = status(client, name, true).await;
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).unwrap();
    info["layerDirs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| PathBuf::from(d.as_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn pull_status_list_remove_and_restart() {
    if !ready() {
        return;
    }
    let reg = Registry::start_empty(Security::Plain);
    reg.push("layered", "berth/layered:latest");
    reg.push("layered", "berth/layered:v2");
    reg.push("layered-plus", "berth/layered-plus:latest");
    // The registry under a second name too (localhost for 127.0.0.1).
    let alias = reg.host().replace("127.0.0.1", "localhost");
    let registries = format!(
        "{}{}",
        berth_e2e::registry::insecure_conf(&reg.host()),
        berth_e2e::registry::insecure_conf(&alias)
    );
    let (berthd, _conf) = start_berthd(&registries).await;
    let mut images = berthd.images().await;

    // Absent: an empty answer, not an error.
    let absent = status(&mut images, &reg.image("layered"), false).await;
    assert!(absent.image.is_none());

    let pulled = pull(&mut images, &reg.image("layered"), None)
        .await
        .unwrap();
    let repo = format!("{}/berth/layered", reg.host());

    let image = status(&mut images, &reg.image("layered"), false)
        .await
        .image
        .unwrap();
    assert_eq!(image.id.len(), 64, "bare hex ID: {}", image.id);
    // PullImage answers with the image ID, as Image.id says it (CRI-O),
    // and through another registry name with the same one.
    assert_eq!(pulled, image.id);
    let again = pull(&mut images, &format!("{alias}/berth/layered:latest"), None)
        .await
        .unwrap();
    assert_eq!(again, image.id);
    let image_ref = image.repo_digests[0].clone();
    assert!(
        image_ref.starts_with(&format!("{repo}@sha256:")),
        "{image_ref}"
    );
    // The alias named the same image: its names go again.
    remove(&mut images, &format!("{alias}/berth/layered:latest")).await;
    pull(&mut images, &reg.image("layered"), None)
        .await
        .unwrap();
    let image = status(&mut images, &reg.image("layered"), false)
        .await
        .image
        .unwrap();
    assert_eq!(image.repo_tags, [format!("{repo}:latest")]);
    assert_eq!(image.repo_digests, std::slice::from_ref(&image_ref));
    assert_eq!(image.uid.as_ref().map(|u| u.value), Some(1000));
    assert!(image.size > 1_000_000, "busybox is in it: {}", image.size);

    // The same image under another tag is one image with both names.
    pull(&mut images, &format!("{repo}:v2"), None)
        .await
        .unwrap();
    for name in [
        reg.image("layered"),
        format!("{repo}:v2"),
        image_ref.clone(),
        image.id.clone(),
        format!("sha256:{}", image.id),
        image.id[..12].to_string(),
    ] {
        let same = status(&mut images, &name, false).await.image.unwrap();
        assert_eq!(same.id, image.id, "asked as {name}");
        assert_eq!(
            same.repo_tags,
            [format!("{repo}:latest"), format!("{repo}:v2")]
        );
    }
    let filtered = images
        .list_images(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec(&format!("{repo}:v2")),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);

    // Verbose info: the config and platform.
    let verbose = status(&mut images, &image.id, true).await;
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["User"], "1000:1000");
    assert_eq!(info["imageSpec"]["config"]["StopSignal"], "SIGINT");
    assert_eq!(info["platform"]["architecture"], "amd64");

    // What the layers hold on disk.
    let dirs = layer_dirs(&mut images, &image.id).await;
    assert_eq!(dirs.len(), 3);
    let (l2, l1) = (&dirs[1], &dirs[2]);
    assert!(l1.join("bin/busybox").is_file());
    let gone = std::fs::symlink_metadata(l2.join("gone")).unwrap();
    assert!(
        gone.file_type().is_char_device() && gone.rdev() == 0,
        "whiteout"
    );
    assert!(
        std::fs::symlink_metadata(l2.join("gone-dir"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    let opaque = xattr(&l2.join("opaque"), "trusted.overlay.opaque");
    assert_eq!(opaque.as_deref(), Some(&b"y"[..]));
    assert_eq!(berth_e2e::entries(&l2.join("opaque")), ["new"]);
    let hello = std::fs::metadata(l2.join("data/hello")).unwrap();
    assert_eq!(
        hello.ino(),
        std::fs::metadata(l2.join("data/hello-hardlink"))
            .unwrap()
            .ino()
    );
    assert_eq!(hello.mtime(), 981173106, "2001-02-03T04:05:06Z");
    assert_eq!(
        xattr(&l2.join("data/hello"), "user.berth").as_deref(),
        Some(&b"fixture"[..])
    );
    assert_eq!(
        std::fs::read_link(l2.join("data/hello-symlink")).unwrap(),
        Path::new("hello")
    );
    assert_eq!(
        std::fs::read_link(l2.join("data/abs-symlink")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert!(
        std::fs::symlink_metadata(l2.join("data/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let home = std::fs::metadata(l2.join("home/user")).unwrap();
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777),
        (1000, 1000, 0o700)
    );
    assert_eq!(
        std::fs::metadata(l2.join("home/user/setuid"))
            .unwrap()
            .mode()
            & 0o7777,
        0o4755
    );
    assert!(!l2.join(".wh.gone").exists() && !l2.join("opaque/.wh..wh..opq").exists());

    // Stacked by overlayfs in lower_dirs order, the layers are the image.
    let rootfs = berthd.paths().dir().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let lower: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    nix::mount::mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={}", lower.join(":")).as_str()),
    )
    .unwrap();
    let seen = (
        rootfs.join("gone").exists(),
        rootfs.join("gone-dir").exists(),
        berth_e2e::entries(&rootfs.join("opaque")),
        berth_e2e::entries(&rootfs.join("data")).len(),
        std::fs::read_to_string(rootfs.join("etc/hostname")).unwrap(),
        rootfs.join("bin/busybox").is_file(),
    );
    nix::mount::umount(&rootfs).unwrap();
    assert_eq!(
        seen,
        (
            false,
            false,
            vec!["new".to_string()],
            6,
            "layered\n".to_string(),
            true
        )
    );

    // layered-plus shares layered's three layers.
    pull(&mut images, &reg.image("layered-plus"), None)
        .await
        .unwrap();
    let plus_dirs = layer_dirs(&mut images, &reg.image("layered-plus")).await;
    assert_eq!(plus_dirs.len(), 4);
    assert_eq!(plus_dirs[1..], dirs[..]);

    let fs = images
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .image_filesystems;
    assert!(fs[0].used_bytes.as_ref().unwrap().value > 1_000_000);
    assert!(fs[0].inodes_used.as_ref().unwrap().value > 20);

    // Images survive a restart.
    let (_, paths) = berthd.stop_with(nix::sys::signal::Signal::SIGTERM).await;
    let berthd = Berthd::start_in(
        paths,
        Options {
            config: format!(
                "[image]\nregistries_config = \"{}\"\n",
                _conf.path().join("registries.conf").display()
            ),
            ..Options::default()
        },
    )
    .await;
    let mut images = berthd.images().await;
    assert_eq!(list(&mut images).await.len(), 2);

    // Remove by tag removes every name; shared layers stay for layered-plus.
    remove(&mut images, &format!("{repo}:v2")).await;
    assert!(
        status(&mut images, &reg.image("layered"), false)
            .await
            .image
            .is_none()
    );
    assert!(status(&mut images, &image_ref, false).await.image.is_none());
    assert!(dirs.iter().all(|d| d.is_dir()));
    // Unknown and concurrent removals succeed; the last one frees the layers.
    let plus = reg.image("layered-plus");
    let (mut a, mut b) = (images.clone(), images.clone());
    let (ra, rb) = tokio::join!(
        a.remove_image(RemoveImageRequest { image: spec(&plus) }),
        b.remove_image(RemoveImageRequest { image: spec(&plus) }),
    );
    ra.unwrap();
    rb.unwrap();
    remove(&mut images, &image.id).await;
    assert!(list(&mut images).await.is_empty());
    let layers_dir = dirs[0].parent().unwrap().parent().unwrap();
    assert_eq!(berth_e2e::entries(layers_dir), Vec::<String>::new());
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "--absolute-names", "-n", name])
        .arg(path)
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

#[tokio::test]
async fn index_platform_and_zstd() {
    if !ready() {
        return;
    }
    let reg = Registry::start_empty(Security::Plain);
    reg.push("multiarch", "berth/multiarch:latest");
    reg.push("zstd", "berth/zstd:latest");
    let registries = format!(
        "unqualified-search-registries = [\"{0}\"]\n{1}\n[aliases]\n\"zz\" = \"{0}/berth/zstd\"\n",
        reg.host(),
        berth_e2e::registry::insecure_conf(&reg.host())
    );
    let (berthd, _conf) = start_berthd(&registries).await;
    let mut images = berthd.images().await;

    let id = pull(&mut images, &reg.image("multiarch"), None)
        .await
        .unwrap();
    let image_ref = status(&mut images, &id, false)
        .await
        .image
        .unwrap()
        .repo_digests[0]
        .clone();
    let dirs = layer_dirs(&mut images, &image_ref).await;
    assert_eq!(
        std::fs::read_to_string(dirs[0].join("platform")).unwrap(),
        "amd64\n"
    );
    // The repo digest names the index, as the tag resolves to it.
    let index = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}", reg.image("multiarch")))
        .output()
        .unwrap()
        .stdout;
    let index_digest = format!("sha256:{}", registry::sha256_hex(&index));
    assert!(
        image_ref.ends_with(&index_digest),
        "{image_ref} vs {index_digest}"
    );
    // By digest works too and is the same image.
    let by_digest = format!("{}/berth/multiarch@{index_digest}", reg.host());
    pull(&mut images, &by_digest, None).await.unwrap();
    // Tag and digest: the digest decides.
    let both = format!("{}/berth/multiarch:latest@{index_digest}", reg.host());
    pull(&mut images, &both, None).await.unwrap();
    assert_eq!(list(&mut images).await.len(), 1);

    // A short name is qualified with the unqualified-search registries.
    pull(&mut images, "berth/zstd", None).await.unwrap();
    // A short-name alias names the same image.
    let aliased = status(&mut images, "zz:latest", false).await.image.unwrap();
    assert_eq!(aliased.repo_tags, [reg.image("zstd")]);
    let dirs = layer_dirs(&mut images, &reg.image("zstd")).await;
    assert_eq!(
        std::fs::read_to_string(dirs[0].join("compression")).unwrap(),
        "zstd\n"
    );

    // Pulled concurrently under two tags: one image with both names.
    reg.push("zstd", "berth/zstd:v2");
    let (v1, v2) = (reg.image("zstd"), format!("{}/berth/zstd:v2", reg.host()));
    remove(&mut images, &v1).await;
    let (mut a, mut b) = (images.clone(), images.clone());
    let (r1, r2) = tokio::join!(pull(&mut a, &v1, None), pull(&mut b, &v2, None));
    r1.unwrap();
    r2.unwrap();
    let zstd = status(&mut images, &v2, false).await.image.unwrap();
    assert_eq!(zstd.repo_tags.len(), 2, "{:?}", zstd.repo_tags);

    // A tag that now names another image moves to it; the old image keeps its digest.
    reg.push("zstd", "berth/multiarch:latest");
    pull(&mut images, &reg.image("multiarch"), None)
        .await
        .unwrap();
    let old = status(&mut images, &image_ref, false).await.image.unwrap();
    assert!(old.repo_tags.is_empty(), "{:?}", old.repo_tags);
    let moved = status(&mut images, &reg.image("multiarch"), false)
        .await
        .image
        .unwrap();
    assert_eq!(moved.id, zstd.id);
    assert_eq!(moved.repo_tags.len(), 3, "{:?}", moved.repo_tags);
}

/// The store holds nothing: no image, no layer, no work in progress.
fn assert_store_empty(berthd: &Berthd) {
    let store = berthd.paths().root().join("images");
    for sub in ["images", "layers", "tmp"] {
        assert_eq!(
            berth_e2e::entries(&store.join(sub)),
            Vec::<String>::new(),
            "{sub}"
        );
    }
}

#[tokio::test]
async fn malicious_layers_are_refused_and_nothing_is_written_outside() {
    if !ready() {
        return;
    }
    let reg = Registry::start_empty(Security::Plain);
    for evil in ["evil-dotdot", "evil-symlink", "evil-hardlink"] {
        reg.push(evil, &format!("berth/{evil}:latest"));
    }
    let (berthd, _conf) = start_berthd(&berth_e2e::registry::insecure_conf(&reg.host())).await;
    let mut images = berthd.images().await;
    let hostname_before = std::fs::read("/etc/hostname").ok();
    for evil in ["evil-dotdot", "evil-symlink", "evil-hardlink"] {
        let err = pull(&mut images, &reg.image(evil), None).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{evil}: {err:?}");
        assert!(
            err.message().contains("outside the layer dir"),
            "{evil}: {}",
            err.message()
        );
    }
    assert!(!Path::new("/tmp/berth-evil-dotdot").exists());
    assert!(!Path::new("/tmp/berth-evil-symlink").exists());
    assert_eq!(std::fs::read("/etc/hostname").ok(), hostname_before);
    assert!(list(&mut images).await.is_empty());
    assert_store_empty(&berthd);
}

#[tokio::test]
async fn corrupt_blob_and_wrong_digest_fail_and_leave_nothing() {
    if !ready() {
        return;
    }
    let reg = Registry::start_empty(Security::Plain);
    reg.push("layered", "berth/layered:latest");
    let (berthd, _conf) = start_berthd(&berth_e2e::registry::insecure_conf(&reg.host())).await;
    let mut images = berthd.images().await;

    // A digest the registry does not have.
    let missing = format!("{}/berth/layered@sha256:{}", reg.host(), "0".repeat(64));
    let err = pull(&mut images, &missing, None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Corrupt the top layer's bytes in the registry's storage.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}", reg.image("layered")))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let layer = manifest["layers"][2]["digest"].as_str().unwrap();
    let path = reg.blob_path(layer.strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    let crc = bytes.len() - 8;
    bytes[crc] ^= 0xff; // the gzip trailer's CRC: every tar entry still unpacks
    std::fs::write(&path, bytes).unwrap();

    let err = pull(&mut images, &reg.image("layered"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains(layer), "{}", err.message());
    assert!(list(&mut images).await.is_empty());
    // Layers that verified are unused without a record: gone after a restart.
    let (_, paths) = berthd.stop_with(nix::sys::signal::Signal::SIGTERM).await;
    let berthd = Berthd::start_in(paths, Options::default()).await;
    assert_store_empty(&berthd);
}

#[tokio::test]
async fn auth_blocked_and_mirrors() {
    if !ready() {
        return;
    }
    let tls = Registry::start_empty(Security::TlsAuth);
    tls.push("layered", "berth/layered:latest");
    let plain = Registry::start_empty(Security::Plain);
    plain.push("multiarch", "berth/multiarch:latest");
    let registries = format!(
        "{0}\n[[registry]]\nprefix = \"blocked.example/berth\"\nblocked = true\n\n\
         [[registry]]\nprefix = \"mirrored.example\"\nlocation = \"127.0.0.1:1\"\n\
         [[registry.mirror]]\nlocation = \"{1}\"\ninsecure = true\n\n\
         [[registry]]\nprefix = \"fallback.example\"\nlocation = \"{1}\"\ninsecure = true\n\
         [[registry.mirror]]\nlocation = \"127.0.0.1:1\"\n\
         [[registry.mirror]]\nlocation = \"{2}\"\ninsecure = true\n",
        berth_e2e::registry::insecure_conf(&tls.host()),
        plain.host(),
        tls.host(),
    );
    let (berthd, _conf) = start_berthd(&registries).await;
    let mut images = berthd.images().await;
    let image = tls.image("layered");

    let err = pull(&mut images, &image, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains(&tls.host()), "{}", err.message());
    let wrong = AuthConfig {
        username: registry::USER.into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull(&mut images, &image, Some(wrong)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let right = AuthConfig {
        username: registry::USER.into(),
        password: registry::PASSWORD.into(),
        ..Default::default()
    };
    pull(&mut images, &image, Some(right)).await.unwrap();
    remove(&mut images, &image).await;
    // The docker `auth` field: base64 of user:password.
    let encoded = AuthConfig {
        auth: base64_encode(&format!("{}:{}", registry::USER, registry::PASSWORD)),
        ..Default::default()
    };
    pull(&mut images, &image, Some(encoded)).await.unwrap();

    let err = pull(&mut images, "blocked.example/berth/x:1", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("blocked"), "{}", err.message());

    // The origin (port 1) is unreachable: the mirror serves it.
    pull(&mut images, "mirrored.example/berth/multiarch", None)
        .await
        .unwrap();
    let got = status(
        &mut images,
        "mirrored.example/berth/multiarch:latest",
        false,
    )
    .await;
    assert!(got.image.is_some());
    // Mirrors that are down or refuse us are skipped; the origin serves it.
    pull(&mut images, "fallback.example/berth/multiarch", None)
        .await
        .unwrap();

    // A registry token is sent as is.
    let fault = FaultRegistry::start(registry::fixtures(), fault_registry::Auth::Bearer);
    let (berthd, _conf2) = start_berthd(&berth_e2e::registry::insecure_conf(&fault.host())).await;
    let mut images = berthd.images().await;
    let token = AuthConfig {
        registry_token: fault_registry::TOKEN.into(),
        ..Default::default()
    };
    pull(&mut images, &fault.image("zstd"), Some(token))
        .await
        .unwrap();
    assert!(fault.token_requests().is_empty());
}

fn base64_encode(text: &str) -> String {
    let out = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn bad_input_names_the_field() {
    if !ready() {
        return;
    }
    let berthd = Berthd::start().await;
    let mut images = berthd.images().await;
    let err = pull(&mut images, "", None).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("image.image"));
    let err = pull(&mut images, "UPPER/Case", None).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Removing an unknown image succeeds.
    remove(&mut images, "never/pulled:1").await;
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn kill_9_mid_pull_then_restart_leaves_nothing() {
    if !ready() {
        return;
    }
    let fault = FaultRegistry::start(registry::fixtures(), fault_registry::Auth::None);
    fault.stall_once(&registry::fixture_layer("layered", 0));
    let (berthd, conf) = start_berthd(&berth_e2e::registry::insecure_conf(&fault.host())).await;
    let mut images = berthd.images().await;
    let name = fault.image("layered");
    let pulling = {
        let name = name.clone();
        tokio::spawn(async move { pull(&mut images, &name, None).await })
    };
    let store = berthd.paths().root().join("images");
    wait_until("two layers done and the third stalled half way", || {
        fault.stalled()
            && berth_e2e::entries(&store.join("layers")).len() == 2
            && !berth_e2e::entries(&store.join("tmp")).is_empty()
    })
    .await;
    let (_, paths) = berthd.stop_with(nix::sys::signal::Signal::SIGKILL).await;
    assert!(pulling.await.unwrap().is_err());
    assert_eq!(
        berth_e2e::entries(&store.join("images")),
        Vec::<String>::new()
    );

    let berthd = Berthd::start_in(
        paths,
        Options {
            config: format!(
                "[image]\nregistries_config = \"{}\"\n",
                conf.path().join("registries.conf").display()
            ),
            ..Options::default()
        },
    )
    .await;
    assert_store_empty(&berthd);
    let mut images = berthd.images().await;
    pull(&mut images, &name, None).await.unwrap();
    assert_eq!(list(&mut images).await.len(), 1);
}

#[tokio::test]
async fn concurrent_pulls_fetch_shared_layers_once() {
    if !ready() {
        return;
    }
    let fault = FaultRegistry::start(registry::fixtures(), fault_registry::Auth::None);
    let (berthd, _conf) = start_berthd(&berth_e2e::registry::insecure_conf(&fault.host())).await;
    let (mut a, mut b) = (berthd.images().await, berthd.images().await);
    let (layered, plus) = (fault.image("layered"), fault.image("layered-plus"));
    let (ra, rb) = tokio::join!(pull(&mut a, &layered, None), pull(&mut b, &plus, None),);
    ra.unwrap();
    rb.unwrap();
    let fetches = fault.fetches();
    for n in 0..3 {
        assert_eq!(
            fetches[&registry::fixture_layer("layered", n)],
            1,
            "layer {n}: {fetches:?}"
        );
    }
    assert_eq!(fetches[&registry::fixture_layer("layered-plus", 3)], 1);
}

#[tokio::test]
async fn bearer_token_flow_anonymous_and_with_credentials() {
    if !ready() {
        return;
    }
    let fault = FaultRegistry::start(registry::fixtures(), fault_registry::Auth::Bearer);
    let (berthd, _conf) = start_berthd(&berth_e2e::registry::insecure_conf(&fault.host())).await;
    let mut images = berthd.images().await;
    pull(&mut images, &fault.image("zstd"), None).await.unwrap();
    assert_eq!(fault.token_requests(), [""], "an anonymous token request");
    remove(&mut images, &fault.image("zstd")).await;
    let creds = AuthConfig {
        username: "u".into(),
        password: "p".into(),
        ..Default::default()
    };
    pull(&mut images, &fault.image("zstd"), Some(creds))
        .await
        .unwrap();
    // Basic dTpw is base64("u:p"): the credentials go to the token endpoint.
    assert_eq!(fault.token_requests()[1], "Basic dTpw");
}

/// Credentials are scoped as containers/image scopes them, and tighter:
/// they go to the registry they were given for, never to its mirrors nor
/// to another unqualified-search registry.
#[tokio::test]
async fn credentials_go_only_to_the_registry_they_were_given_for() {
    if !ready() {
        return;
    }
    let origin = FaultRegistry::start(registry::fixtures(), fault_registry::Auth::Bearer);
    let mirror = FaultRegistry::start(registry::fixtures(), fault_registry::Auth::Bearer);
    let (o, m) = (origin.host(), mirror.host());
    let conf = format!(
        "unqualified-search-registries = [\"{m}\", \"{o}\"]\n\
         [[registry]]\nlocation = \"{o}\"\ninsecure = true\n\
         [[registry.mirror]]\nlocation = \"{m}\"\ninsecure = true\n\
         [[registry]]\nlocation = \"{m}\"\ninsecure = true\n"
    );
    let (berthd, _conf) = start_berthd(&conf).await;
    let mut images = berthd.images().await;
    let basic = "Basic dTpw"; // base64("u:p")
    let creds = |server_address: &str| AuthConfig {
        username: "u".into(),
        password: "p".into(),
        server_address: server_address.into(),
        ..Default::default()
    };
    let (manifest, _) = registry::fixture_manifest("zstd");
    let sent_basic = |r: &FaultRegistry| r.authorizations().iter().any(|a| a == basic);

    // The mirror serves it, with an anonymous token.
    pull(&mut images, &origin.image("zstd"), Some(creds("")))
        .await
        .unwrap();
    assert!(
        !mirror.authorizations().is_empty(),
        "the mirror served the pull"
    );
    assert!(!sent_basic(&mirror), "{:?}", mirror.authorizations());
    assert!(origin.authorizations().is_empty());
    remove(&mut images, &origin.image("zstd")).await;

    // A mirror without the image: the origin gets the credentials.
    mirror.inject(&manifest, &[fault_registry::Fault::NotFound]);
    pull(&mut images, &origin.image("zstd"), Some(creds("")))
        .await
        .unwrap();
    assert!(sent_basic(&origin), "{:?}", origin.authorizations());
    assert!(!sent_basic(&mirror), "{:?}", mirror.authorizations());
    remove(&mut images, &origin.image("zstd")).await;

    // A short name, with credentials for the second search registry: the
    // first one (the mirror's own name) lacks it and must not see them;
    // then the origin's mirror lacks it too, and the origin gets them.
    let before = origin.authorizations().len();
    mirror.inject(
        &manifest,
        &[
            fault_registry::Fault::NotFound,
            fault_registry::Fault::NotFound,
        ],
    );
    pull(
        &mut images,
        "berth/zstd:latest",
        Some(creds(&format!("http://{o}/v2/"))),
    )
    .await
    .unwrap();
    assert!(!sent_basic(&mirror), "{:?}", mirror.authorizations());
    assert!(
        origin.authorizations()[before..].iter().any(|a| a == basic),
        "{:?}",
        origin.authorizations()
    );
    remove(&mut images, &format!("{o}/berth/zstd:latest")).await;

    // A short name's credentials are docker.io's, as the kubelet looks
    // them up: no search registry here gets them.
    let (before_o, before_m) = (origin.authorizations().len(), mirror.authorizations().len());
    pull(&mut images, "berth/zstd:latest", Some(creds("")))
        .await
        .unwrap();
    assert!(
        !origin.authorizations()[before_o..]
            .iter()
            .any(|a| a == basic)
    );
    assert!(
        !mirror.authorizations()[before_m..]
            .iter()
            .any(|a| a == basic)
    );
}

#[tokio::test]
async fn transient_registry_faults_are_retried_and_persistent_ones_reported() {
    if !ready() {
        return;
    }
    let fault = FaultRegistry::start(registry::fixtures(), fault_registry::Auth::None);
    let (berthd, _conf) = start_berthd(&berth_e2e::registry::insecure_conf(&fault.host())).await;
    let mut images = berthd.images().await;
    let name = fault.image("layered");
    let (manifest, _) = registry::fixture_manifest("layered");
    let config = registry::fixture_config("layered");
    let layers: Vec<String> = (0..3)
        .map(|n| registry::fixture_layer("layered", n))
        .collect();
    fault.inject(&manifest, &[Fault::ServerError]);
    fault.inject(&config, &[Fault::DropMidBody]);
    fault.inject(&layers[0], &[Fault::ShortBody]);
    fault.inject(&layers[1], &[Fault::DropMidBody, Fault::ServerError]);
    pull(&mut images, &name, None).await.unwrap();
    let fetches = fault.fetches();
    assert_eq!(fetches[&manifest], 2, "{fetches:?}");
    assert_eq!(fetches[&config], 2, "{fetches:?}");
    assert_eq!(fetches[&layers[0]], 2, "{fetches:?}");
    assert_eq!(fetches[&layers[1]], 3, "{fetches:?}");
    assert_eq!(fetches[&layers[2]], 1, "{fetches:?}");
    assert_eq!(list(&mut images).await.len(), 1);
    let store = berthd.paths().root().join("images");
    assert_eq!(berth_e2e::entries(&store.join("tmp")), Vec::<String>::new());

    // One failure more than the default 3 retries: a clear error, no image.
    remove(&mut images, &name).await;
    fault.inject(&layers[2], &[Fault::ServerError; 4]);
    let err = pull(&mut images, &name, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    for part in [fault.host().as_str(), layers[2].as_str(), "HTTP 500"] {
        assert!(err.message().contains(part), "{part}: {}", err.message());
    }
    assert_eq!(fault.fetches()[&layers[2]], 1 + 4);
    assert!(list(&mut images).await.is_empty());
    assert_eq!(
        berth_e2e::entries(&store.join("images")),
        Vec::<String>::new()
    );
    assert_eq!(berth_e2e::entries(&store.join("tmp")), Vec::<String>::new());
}

#[tokio::test]
async fn a_silent_registry_fails_the_pull_and_a_slow_one_does_not() {
    if !ready() {
        return;
    }
    let fault = FaultRegistry::start(registry::fixtures(), fault_registry::Auth::None);
    let (berthd, _conf) = Berthd::start_with_registries(
        &berth_e2e::registry::insecure_conf(&fault.host()),
        "pull_progress_timeout = 2\n",
    )
    .await;
    let mut images = berthd.images().await;
    let name = fault.image("layered");
    let layers: Vec<String> = (0..3)
        .map(|n| registry::fixture_layer("layered", n))
        .collect();

    fault.stall_once(&layers[0]);
    let err = pull(&mut images, &name, None).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    for part in [layers[0].as_str(), "no progress for 2s"] {
        assert!(err.message().contains(part), "{part}: {}", err.message());
    }
    wait_until("the stalled connection closed", || fault.abandoned()).await;
    assert!(list(&mut images).await.is_empty());
    let store = berthd.paths().root().join("images");
    assert_eq!(berth_e2e::entries(&store.join("tmp")), Vec::<String>::new());

    // Eight pieces 600 ms apart: longer than the timeout in all, never silent that long.
    fault.inject(&layers[1], &[Fault::Drip(Duration::from_millis(600))]);
    pull(&mut images, &name, None).await.unwrap();
    assert_eq!(list(&mut images).await.len(), 1);
}

#[tokio::test]
async fn a_cancelled_pull_stops_its_downloads_and_leaves_nothing() {
    if !ready() {
        return;
    }
    let fault = FaultRegistry::start(registry::fixtures(), fault_registry::Auth::None);
    let layer = registry::fixture_layer("layered", 0);
    fault.stall_once(&layer);
    let (berthd, _conf) = start_berthd(&berth_e2e::registry::insecure_conf(&fault.host())).await;
    let name = fault.image("layered");
    let pulling = {
        let (mut images, name) = (berthd.images().await, name.clone());
        tokio::spawn(async move { pull(&mut images, &name, None).await })
    };
    let tmp = berthd.paths().root().join("images/tmp");
    wait_until("the layer download stalled half way", || {
        fault.stalled() && !berth_e2e::entries(&tmp).is_empty()
    })
    .await;
    pulling.abort();
    wait_until("berthd closed the registry connection", || {
        fault.abandoned()
    })
    .await;
    wait_until("the half-unpacked layer removed", || {
        berth_e2e::entries(&tmp).is_empty()
    })
    .await;
    let mut images = berthd.images().await;
    assert!(list(&mut images).await.is_empty());
    pull(&mut images, &name, None).await.unwrap();
    assert_eq!(fault.fetches()[&layer], 2);
}
