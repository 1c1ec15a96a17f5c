//! SPDY/3.1 frames: parsing from and writing to bytes.
//!
//! A control frame is `1 | version(15) | type(16) | flags(8) | length(24)`
//! then its payload; a data frame is `0 | stream id(31) | flags(8) |
//! length(24)` then the data. Header blocks are compressed by [`Codec`],
//! which owns the session's two zlib streams.

use super::zlib::{HeaderBlock, HeaderDecoder, HeaderEncoder};

pub const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
pub const FLAG_SETTINGS_CLEAR: u8 = 0x01;

/// Frame payloads are 24-bit lengths; we accept all of them.
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;
pub const HEADER_LEN: usize = 8;
const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const UNSUPPORTED_VERSION: u32 = 4;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// SETTINGS ids.
pub mod settings {
    pub const MAX_CONCURRENT_STREAMS: u32 = 4;
    pub const INITIAL_WINDOW_SIZE: u32 = 7;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("{kind} frame: payload of {len} bytes, expected {expected}")]
    Length {
        kind: &'static str,
        len: usize,
        expected: &'static str,
    },
    #[error("{0} frame on stream 0")]
    StreamZero(&'static str),
    #[error("WINDOW_UPDATE with a zero delta")]
    ZeroDelta,
    #[error("bad header block: {0}")]
    Headers(String),
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    /// 24 bits.
    pub id: u32,
    pub value: u32,
}

/// A frame with its header block decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        slot: u8,
        flags: u8,
        headers: HeaderBlock,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: HeaderBlock,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: HeaderBlock,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Vec<u8>,
    },
    /// A control frame of a type we do not know: the protocol says to
    /// ignore it.
    Unknown {
        kind: u16,
    },
}

impl Frame {
    pub fn is_fin(&self) -> bool {
        match self {
            Frame::SynStream { flags, .. }
            | Frame::SynReply { flags, .. }
            | Frame::Headers { flags, .. }
            | Frame::Data { flags, .. } => flags & FLAG_FIN != 0,
            _ => false,
        }
    }
}

/// One session's framing state: the two header compression streams.
#[derive(Default)]
pub struct Codec {
    encoder: HeaderEncoder,
    decoder: HeaderDecoder,
}

/// The 8-byte header that starts every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The stream of a DATA frame; `None` for a control frame.
    pub data_stream: Option<u32>,
    pub flags: u8,
    /// Payload length.
    pub len: usize,
}

/// The header of the frame at the start of `buf`, once its 8 bytes are
/// there: lets a reader take a DATA payload piece by piece instead of
/// holding up to 16 MiB of it.
pub fn head(buf: &[u8]) -> Option<Head> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    Some(Head {
        data_stream: (buf[0] & 0x80 == 0).then(|| u32_at(buf, 0) & STREAM_ID_MASK),
        flags: buf[4],
        len: (u32_at(buf, 4) & 0x00ff_ffff) as usize,
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn need(
    kind: &'static str,
    len: usize,
    ok: bool,
    expected: &'static str,
) -> Result<(), FrameError> {
    if ok {
        Ok(())
    } else {
        Err(FrameError::Length {
            kind,
            len,
            expected,
        })
    }
}

fn nonzero(kind: &'static str, id: u32) -> Result<u32, FrameError> {
    if id == 0 {
        Err(FrameError::StreamZero(kind))
    } else {
        Ok(id)
    }
}

impl Codec {
    /// Parses one frame from the start of `buf`: `Ok(None)` when more bytes
    /// are needed, else the frame and how many bytes it took. A frame that
    /// fails to parse is consumed whole by the error: the session is broken
    /// anyway (its zlib stream may be out of step).
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = (u32_at(buf, 4) & 0x00ff_ffff) as usize;
        if buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let flags = buf[4];
        let p = &buf[HEADER_LEN..HEADER_LEN + len];
        let frame = if buf[0] & 0x80 == 0 {
            Frame::Data {
                stream_id: u32_at(buf, 0) & STREAM_ID_MASK,
                flags,
                data: p.to_vec(),
            }
        } else {
            let version = u16::from_be_bytes([buf[0], buf[1]]) & 0x7fff;
            if version != VERSION {
                return Err(FrameError::Version(version));
            }
            self.control(u16::from_be_bytes([buf[2], buf[3]]), flags, p)?
        };
        Ok(Some((frame, HEADER_LEN + len)))
    }

    fn control(&mut self, kind: u16, flags: u8, p: &[u8]) -> Result<Frame, FrameError> {
        let len = p.len();
        Ok(match kind {
            1 => {
                need("SYN_STREAM", len, len >= 10, "at least 10")?;
                Frame::SynStream {
                    stream_id: nonzero("SYN_STREAM", u32_at(p, 0) & STREAM_ID_MASK)?,
                    associated_to: u32_at(p, 4) & STREAM_ID_MASK,
                    priority: p[8] >> 5,
                    slot: p[9],
                    flags,
                    headers: self.decoder.decode(&p[10..])?,
                }
            }
            2 => {
                need("SYN_REPLY", len, len >= 4, "at least 4")?;
                Frame::SynReply {
                    stream_id: nonzero("SYN_REPLY", u32_at(p, 0) & STREAM_ID_MASK)?,
                    flags,
                    headers: self.decoder.decode(&p[4..])?,
                }
            }
            3 => {
                need("RST_STREAM", len, len == 8, "8")?;
                Frame::RstStream {
                    stream_id: nonzero("RST_STREAM", u32_at(p, 0) & STREAM_ID_MASK)?,
                    status: u32_at(p, 4),
                }
            }
            4 => {
                need("SETTINGS", len, len >= 4, "at least 4")?;
                let count = u32_at(p, 0) as usize;
                need(
                    "SETTINGS",
                    len,
                    count.checked_mul(8).and_then(|n| n.checked_add(4)) == Some(len),
                    "4 + 8 per entry",
                )?;
                let entries = p[4..]
                    .chunks_exact(8)
                    .map(|e| Setting {
                        flags: e[0],
                        id: u32_at(e, 0) & 0x00ff_ffff,
                        value: u32_at(e, 4),
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            6 => {
                need("PING", len, len == 4, "4")?;
                Frame::Ping { id: u32_at(p, 0) }
            }
            7 => {
                need("GOAWAY", len, len == 8, "8")?;
                Frame::GoAway {
                    last_good_stream_id: u32_at(p, 0) & STREAM_ID_MASK,
                    status: u32_at(p, 4),
                }
            }
            8 => {
                need("HEADERS", len, len >= 4, "at least 4")?;
                Frame::Headers {
                    stream_id: nonzero("HEADERS", u32_at(p, 0) & STREAM_ID_MASK)?,
                    flags,
                    headers: self.decoder.decode(&p[4..])?,
                }
            }
            9 => {
                need("WINDOW_UPDATE", len, len == 8, "8")?;
                let delta = u32_at(p, 4) & STREAM_ID_MASK;
                if delta == 0 {
                    return Err(FrameError::ZeroDelta);
                }
                // Stream 0 is the session window (SPDY/3.1).
                Frame::WindowUpdate {
                    stream_id: u32_at(p, 0) & STREAM_ID_MASK,
                    delta,
                }
            }
            kind => Frame::Unknown { kind },
        })
    }

    /// Appends `frame` to `out`. Stream ids and deltas are masked to 31
    /// bits; a payload beyond 24 bits is the caller's bug.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) {
        let control = |out: &mut Vec<u8>, kind: u16, flags: u8, payload: &[u8]| {
            assert!(payload.len() <= MAX_PAYLOAD, "SPDY frame too large");
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.push(flags);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(payload);
        };
        let id = |v: u32| (v & STREAM_ID_MASK).to_be_bytes();
        match frame {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                headers,
            } => {
                let mut p = Vec::new();
                p.extend_from_slice(&id(*stream_id));
                p.extend_from_slice(&id(*associated_to));
                p.push((priority & 7) << 5);
                p.push(*slot);
                p.extend_from_slice(&self.encoder.encode(headers));
                control(out, 1, *flags, &p);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                let mut p = id(*stream_id).to_vec();
                p.extend_from_slice(&self.encoder.encode(headers));
                control(out, 2, *flags, &p);
            }
            Frame::RstStream { stream_id, status } => {
                let mut p = id(*stream_id).to_vec();
                p.extend_from_slice(&status.to_be_bytes());
                control(out, 3, 0, &p);
            }
            Frame::Settings { flags, entries } => {
                let mut p = (entries.len() as u32).to_be_bytes().to_vec();
                for e in entries {
                    p.push(e.flags);
                    p.extend_from_slice(&(e.id & 0x00ff_ffff).to_be_bytes()[1..]);
                    p.extend_from_slice(&e.value.to_be_bytes());
                }
                control(out, 4, *flags, &p);
            }
            Frame::Ping { id } => control(out, 6, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut p = id(*last_good_stream_id).to_vec();
                p.extend_from_slice(&status.to_be_bytes());
                control(out, 7, 0, &p);
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let mut p = id(*stream_id).to_vec();
                p.extend_from_slice(&self.encoder.encode(headers));
                control(out, 8, *flags, &p);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut p = id(*stream_id).to_vec();
                p.extend_from_slice(&id(*delta));
                control(out, 9, 0, &p);
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                assert!(data.len() <= MAX_PAYLOAD, "SPDY frame too large");
                out.extend_from_slice(&id(*stream_id));
                out.push(*flags);
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
            }
            Frame::Unknown { kind } => control(out, *kind, 0, &[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frames: &[Frame]) {
        let mut tx = Codec::default();
        let mut rx = Codec::default();
        let mut wire = Vec::new();
        for f in frames {
            tx.encode(f, &mut wire);
        }
        let mut at = 0;
        for f in frames {
            // Byte by byte first: a partial frame is never an error.
            for cut in at..at + 8 {
                let mut probe = Codec::default();
                assert_eq!(probe.decode(&wire[at..cut]), Ok(None));
            }
            let (got, used) = rx.decode(&wire[at..]).unwrap().unwrap();
            assert_eq!(&got, f);
            at += used;
        }
        assert_eq!(at, wire.len());
    }

    #[test]
    fn every_frame_type_round_trips() {
        let h = |pairs: &[(&str, &str)]| -> HeaderBlock {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        round_trip(&[
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 7,
                slot: 0,
                flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
                headers: h(&[("streamtype", "error"), ("port", "80")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::RstStream {
                stream_id: 3,
                status: rst::CANCEL,
            },
            Frame::Settings {
                flags: FLAG_SETTINGS_CLEAR,
                entries: vec![Setting {
                    flags: 1,
                    id: settings::INITIAL_WINDOW_SIZE,
                    value: 1 << 20,
                }],
            },
            Frame::Ping { id: 0xdead_beef },
            Frame::GoAway {
                last_good_stream_id: 7,
                status: 0,
            },
            Frame::Headers {
                stream_id: 5,
                flags: FLAG_FIN,
                headers: h(&[("a", "b\0c")]),
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 0x7fff_ffff,
            },
            Frame::Data {
                stream_id: 0x7fff_ffff,
                flags: FLAG_FIN,
                data: b"hello".to_vec(),
            },
            Frame::Data {
                stream_id: 9,
                flags: 0,
                data: vec![],
            },
            Frame::Unknown { kind: 5 },
        ]);
    }

    #[test]
    fn malformed_frames_are_errors() {
        let mut c = Codec::default();
        // SPDY/2
        assert_eq!(
            c.decode(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]),
            Err(FrameError::Version(2))
        );
        // PING of 3 bytes
        assert!(c.decode(&[0x80, 3, 0, 6, 0, 0, 0, 3, 0, 0, 1]).is_err());
        // RST_STREAM on stream 0
        assert_eq!(
            c.decode(&[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(FrameError::StreamZero("RST_STREAM"))
        );
        // WINDOW_UPDATE of 0
        assert_eq!(
            c.decode(&[0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0]),
            Err(FrameError::ZeroDelta)
        );
        // SETTINGS whose count does not match its length
        assert!(
            c.decode(&[0x80, 3, 0, 4, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff])
                .is_err()
        );
        // SYN_STREAM whose header block is not zlib
        let mut syn = vec![0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        syn.extend_from_slice(b"junk");
        assert!(Codec::default().decode(&syn).is_err());
    }
}
