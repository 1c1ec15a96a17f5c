//! Layer tars: unpacking never panics and never writes outside the layer
//! dir. Each input is unpacked into `<tmp>/layer` beside an empty canary
//! dir; afterwards `<tmp>` holds just those two and the canary is empty.
#![no_main]

use berth_image::unpack::{Limits, unpack};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("tempdir");
    let layer = tmp.path().join("layer");
    let canary = tmp.path().join("canary");
    std::fs::create_dir(&layer).unwrap();
    std::fs::create_dir(&canary).unwrap();
    let _ = unpack(data, &layer, &Limits::default());
    let mut names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["canary", "layer"],
        "an entry landed beside the layer dir"
    );
    assert!(
        std::fs::read_dir(&canary).unwrap().next().is_none(),
        "an entry landed in a sibling dir"
    );
});
