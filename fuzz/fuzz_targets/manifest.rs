//! Manifests, indexes and image configs from a registry: parsing and
//! platform selection never panic, whatever the bytes and content type.
#![no_main]

use berth_image::manifest::{self, ImageConfig, Manifest, Platform};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: [&str; 5] = [
    "",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[selector as usize % CONTENT_TYPES.len()];
    match Manifest::parse("fuzz", content_type, body) {
        Ok(Manifest::Index(manifests)) => {
            let _ = manifest::select("fuzz", &manifests, &Platform::host());
        }
        Ok(Manifest::Image(image)) => {
            for layer in &image.layers {
                manifest::Compression::of(layer).expect("parse checked every layer's media type");
            }
        }
        Err(_) => {}
    }
    let _ = serde_json::from_slice::<ImageConfig>(body);
});
