//! Feeds arbitrary bytes to one SPDY session's decoder: it must return
//! frames or errors, never panic or allocate without bound.
#![no_main]

use berth_streaming::spdy::frame::Codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut codec = Codec::default();
    let mut at = 0;
    while let Ok(Some((_, used))) = codec.decode(&data[at..]) {
        at += used;
    }
});
