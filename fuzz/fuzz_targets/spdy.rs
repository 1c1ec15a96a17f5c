//! SPDY/3.1 frames from a hostile client (the streaming server's upgraded
//! connections): decoding arbitrary bytes, including the zlib-compressed
//! header blocks of a session's one inflate stream, never panics, and
//! whatever decodes re-encodes to bytes that decode to the same frame.
#![no_main]

use berth_streaming::spdy::frame::{Codec, Frame};
use berth_streaming::spdy::zlib;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One session: frames back to back, the header decoder's state carried
    // from frame to frame as on a real connection.
    let mut session = Codec::default();
    let mut rest = data;
    while let Ok(Some((frame, used))) = session.decode(rest) {
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
        roundtrip(&frame);
    }
    // A header block as it is once inflated.
    let _ = zlib::decode_block(data);
});

/// Encoding with a fresh session and decoding with another gives the frame
/// back (the two zlib streams start in step).
fn roundtrip(frame: &Frame) {
    let mut out = Vec::new();
    Codec::default().encode(frame, &mut out);
    let (again, used) = Codec::default()
        .decode(&out)
        .expect("an encoded frame decodes")
        .expect("an encoded frame is complete");
    assert_eq!(used, out.len());
    assert_eq!(&again, frame);
}
