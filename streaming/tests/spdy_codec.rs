//! Property tests of the SPDY codec: every frame round-trips through one
//! session's compression streams, and arbitrary bytes never panic.

use berth_streaming::spdy::frame::{Codec, Frame, Setting};
use proptest::prelude::*;

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::btree_map("[a-z][a-z0-9-]{0,15}", "[ -~]{0,40}", 0..6)
        .prop_map(|m| m.into_iter().collect())
}

fn id() -> impl Strategy<Value = u32> {
    1u32..=0x7fff_ffff
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            id(),
            0u32..=0x7fff_ffff,
            0u8..8,
            any::<u8>(),
            0u8..4,
            headers()
        )
            .prop_map(
                |(stream_id, associated_to, priority, slot, flags, headers)| Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    flags,
                    headers
                }
            ),
        (id(), 0u8..2, headers()).prop_map(|(stream_id, flags, headers)| Frame::SynReply {
            stream_id,
            flags,
            headers
        }),
        (id(), any::<u32>()).prop_map(|(stream_id, status)| Frame::RstStream { stream_id, status }),
        (
            any::<u8>(),
            proptest::collection::vec((any::<u8>(), 0u32..1 << 24, any::<u32>()), 0..5)
        )
            .prop_map(|(flags, e)| Frame::Settings {
                flags,
                entries: e
                    .into_iter()
                    .map(|(flags, id, value)| Setting { flags, id, value })
                    .collect()
            }),
        any::<u32>().prop_map(|id| Frame::Ping { id }),
        (0u32..=0x7fff_ffff, any::<u32>()).prop_map(|(last_good_stream_id, status)| {
            Frame::GoAway {
                last_good_stream_id,
                status,
            }
        }),
        (id(), 0u8..2, headers()).prop_map(|(stream_id, flags, headers)| Frame::Headers {
            stream_id,
            flags,
            headers
        }),
        (0u32..=0x7fff_ffff, id())
            .prop_map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
        (
            0u32..=0x7fff_ffff,
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(stream_id, flags, data)| Frame::Data {
                stream_id,
                flags,
                data
            }),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip_in_sequence(frames in proptest::collection::vec(frame(), 1..12)) {
        let mut tx = Codec::default();
        let mut rx = Codec::default();
        let mut wire = Vec::new();
        for f in &frames {
            tx.encode(f, &mut wire);
        }
        let mut at = 0;
        for f in &frames {
            let (got, used) = rx.decode(&wire[at..]).unwrap().unwrap();
            prop_assert_eq!(&got, f);
            at += used;
        }
        prop_assert_eq!(at, wire.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut codec = Codec::default();
        let mut at = 0;
        while let Ok(Some((_, used))) = codec.decode(&bytes[at..]) {
            at += used;
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        f in frame(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let mut wire = Vec::new();
        Codec::default().encode(&f, &mut wire);
        for (at, byte) in flips {
            let at = at % wire.len();
            wire[at] ^= byte;
        }
        let _ = Codec::default().decode(&wire);
    }
}
