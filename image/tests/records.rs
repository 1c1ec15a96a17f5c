//! Start-up with damaged image records: the store opens, serves the intact
//! images and leaves the unreadable ones out, keeping every layer (running
//! containers may use the ones the unreadable records had).

use berth_image::manifest::ImageConfig;
use berth_image::{ChainId, Digest, Image, ImageStore, PullSettings, StoreOptions};

fn digest(byte: char) -> Digest {
    format!("sha256:{}", byte.to_string().repeat(64))
        .parse()
        .unwrap()
}

#[test]
fn unreadable_records_are_skipped_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let options = StoreOptions {
        dir: images.clone(),
        registries_config: None,
        registries_config_required: false,
        pull: PullSettings {
            parallelism: 1,
            retries: 0,
            progress_timeout: std::time::Duration::from_secs(1),
            max_layer_size: berth_image::unpack::DEFAULT_MAX_LAYER_SIZE,
        },
    };
    drop(ImageStore::open(options.clone()).unwrap());

    let good = Image {
        id: digest('a'),
        repo_tags: vec!["example.com/good:1".into()],
        repo_digests: vec![],
        manifests: vec![],
        chain_ids: vec![ChainId(digest('c'))],
        size: 1,
        config: ImageConfig::default(),
        pulled_at: 1,
    };
    let bytes = serde_json::to_vec(&good).unwrap();
    std::fs::write(
        images.join(format!("images/{}.json", good.id.hex())),
        &bytes,
    )
    .unwrap();
    // A record cut short, one of garbage, one empty (a crash before the
    // data reached the disk).
    let bad = ['b', 'd', 'e'].map(|c| images.join(format!("images/{}.json", digest(c).hex())));
    std::fs::write(&bad[0], &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(&bad[1], b"\x00\xffgarbage").unwrap();
    std::fs::write(&bad[2], b"").unwrap();
    // The good image's layer, and one no readable record names: the broken
    // records may have had it, and a running container may use it.
    let kept = images.join(format!("layers/{}", digest('c').hex()));
    let unknown = images.join(format!("layers/{}", digest('f').hex()));
    for layer in [&kept, &unknown] {
        std::fs::create_dir_all(layer.join("diff")).unwrap();
    }

    let store = ImageStore::open(options.clone()).unwrap();
    let ids: Vec<Digest> = store.list().into_iter().map(|i| i.id).collect();
    assert_eq!(ids, vec![good.id.clone()]);
    assert!(store.get("example.com/good:1").is_some());
    assert!(kept.is_dir());
    assert!(
        unknown.is_dir(),
        "no garbage collection with unreadable records"
    );
    // Left for inspection; a pull of the image rewrites it.
    assert!(bad.iter().all(|path| path.is_file()));
    drop(store);

    // Once they are gone, the next start collects the layer.
    for path in &bad {
        std::fs::remove_file(path).unwrap();
    }
    let store = ImageStore::open(options).unwrap();
    assert_eq!(store.list().len(), 1);
    assert!(kept.is_dir());
    assert!(!unknown.exists());
}
