//! Image references: parsing never panics, and what parses prints back as a
//! reference that parses to the same thing.
#![no_main]

use berth_image::ParsedRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = ParsedRef::parse(text) else {
        return;
    };
    let qualified = parsed.qualify("docker.io");
    let shown = qualified.to_string();
    let again = ParsedRef::parse(&shown)
        .unwrap_or_else(|e| panic!("{text:?} printed as {shown:?}, which does not parse: {e}"));
    assert_eq!(
        again.qualify("docker.io").to_string(),
        shown,
        "from {text:?}"
    );
    let _ = qualified.repository();
    let _ = qualified.tagged();
});
