//! The Kubernetes remote-command and port-forward protocols' shared parts:
//! protocol names, stream types, the `Status` sent on the error stream and
//! terminal resize events.

use serde::{Deserialize, Serialize};

/// `X-Stream-Protocol-Version` of exec/attach over SPDY (the only one we
/// speak there: the error stream carries a `Status`, resize is supported).
pub const SPDY_EXEC_V4: &str = "v4.channel.k8s.io";
/// `X-Stream-Protocol-Version` of port-forward over SPDY.
pub const SPDY_PORT_FORWARD: &str = "portforward.k8s.io";
pub const PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";

/// WebSocket subprotocol of port-forward as client-go 1.30+ speaks it
/// (KEP-4006): the SPDY/3.1 `portforward.k8s.io` session, its bytes carried
/// in binary messages.
pub const WS_SPDY_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";

/// WebSocket subprotocols of exec/attach, in our order of preference.
pub const WS_V5: &str = "v5.channel.k8s.io";
pub const WS_V4: &str = "v4.channel.k8s.io";
pub const WS_V4_BASE64: &str = "v4.base64.channel.k8s.io";
pub const WS_V1: &str = "channel.k8s.io";
pub const WS_V1_BASE64: &str = "base64.channel.k8s.io";

/// Stream types (the `streamtype` header of SPDY streams).
pub const STREAM_ERROR: &str = "error";
pub const STREAM_STDIN: &str = "stdin";
pub const STREAM_STDOUT: &str = "stdout";
pub const STREAM_STDERR: &str = "stderr";
pub const STREAM_RESIZE: &str = "resize";
pub const STREAM_DATA: &str = "data";

/// WebSocket channel numbers of exec/attach.
pub const CH_STDIN: u8 = 0;
pub const CH_STDOUT: u8 = 1;
pub const CH_STDERR: u8 = 2;
pub const CH_ERROR: u8 = 3;
pub const CH_RESIZE: u8 = 4;
/// v5: `[255, channel]` closes that channel (stdin EOF).
pub const CH_CLOSE: u8 = 255;

/// A terminal size as the clients send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Accumulates resize-stream bytes and yields each complete JSON object.
#[derive(Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

/// An unfinished resize event longer than this is garbage (a real one is
/// about 30 bytes), and must not grow the decoder without end.
const MAX_PENDING_RESIZE: usize = 1 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error("bad resize event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unfinished resize event of over {MAX_PENDING_RESIZE} bytes")]
    TooLong,
}

impl ResizeDecoder {
    /// Feeds bytes; returns the sizes completed by them. Garbage is an
    /// error, and is dropped.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<TermSize>, ResizeError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut iter = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TermSize>();
        loop {
            match iter.next() {
                Some(Ok(size)) => out.push(size),
                Some(Err(err)) if err.is_eof() => break,
                Some(Err(err)) => {
                    self.buf.clear();
                    return Err(err.into());
                }
                None => break,
            }
        }
        let used = iter.byte_offset();
        self.buf.drain(..used);
        if self.buf.len() > MAX_PENDING_RESIZE {
            self.buf.clear();
            return Err(ResizeError::TooLong);
        }
        Ok(out)
    }
}

/// How a remote command ended, for the error stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0, or an attach session that ended.
    Success,
    /// The process exited non-zero.
    ExitCode(i32),
    /// Running it failed.
    Error(String),
}

/// The `metav1.Status` JSON the kubelet writes on the error stream.
pub fn status_json(outcome: &Outcome, cmd: &[String]) -> Vec<u8> {
    let value = match outcome {
        Outcome::Success => serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        }),
        Outcome::ExitCode(code) => serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Error(message) => serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": "InternalError",
        }),
    };
    serde_json::to_vec(&value).expect("status serializes")
}

/// The first protocol in the client's list that we support (the client's
/// order wins, as in the kubelet's negotiation).
pub fn negotiate<'a>(
    offered: impl IntoIterator<Item = &'a str>,
    ours: &[&'static str],
) -> Option<&'static str> {
    offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| ours.iter().find(|o| **o == p).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_events_decode_across_chunk_boundaries() {
        let mut d = ResizeDecoder::default();
        assert_eq!(d.feed(br#"{"Width":80,"Hei"#).unwrap(), vec![]);
        assert_eq!(
            d.feed(br#"ght":24}{"Width":100,"Height":50}"#).unwrap(),
            vec![
                TermSize {
                    width: 80,
                    height: 24
                },
                TermSize {
                    width: 100,
                    height: 50
                }
            ]
        );
        assert!(d.feed(b"]").is_err());
    }

    #[test]
    fn an_unfinished_resize_event_is_dropped_past_its_cap() {
        let mut d = ResizeDecoder::default();
        assert_eq!(d.feed(br#"{"Width":""#).unwrap(), vec![]);
        let junk = vec![b'a'; 600];
        assert_eq!(d.feed(&junk).unwrap(), vec![]);
        assert!(matches!(d.feed(&junk), Err(ResizeError::TooLong)));
        // Garbage is gone: the next event decodes.
        assert_eq!(
            d.feed(br#"{"Width":1,"Height":2}"#).unwrap(),
            vec![TermSize {
                width: 1,
                height: 2
            }]
        );
    }

    #[test]
    fn status_carries_the_exit_code_like_the_kubelet() {
        let v: serde_json::Value =
            serde_json::from_slice(&status_json(&Outcome::ExitCode(3), &["false".into()])).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let v: serde_json::Value =
            serde_json::from_slice(&status_json(&Outcome::Success, &[])).unwrap();
        assert_eq!(v["status"], "Success");
    }

    #[test]
    fn negotiation_takes_the_clients_first_supported_protocol() {
        let ours = &[WS_V5, WS_V4];
        assert_eq!(
            negotiate(["v4.channel.k8s.io, v5.channel.k8s.io"], ours),
            Some(WS_V4)
        );
        assert_eq!(negotiate(["x", "v5.channel.k8s.io"], ours), Some(WS_V5));
        assert_eq!(negotiate(["v3.channel.k8s.io"], ours), None);
    }
}
