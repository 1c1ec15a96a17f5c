//! The Kubernetes protocols over WebSocket: each message is one channel
//! byte then data (base64 protocols: the channel as an ASCII digit, then
//! base64 text). Exec/attach channels are stdin 0, stdout 1, stderr 2,
//! error 3, resize 4; v5 adds `[255, channel]` to close a channel.
//! Port-forward has a data (2i) and an error (2i+1) channel per port of
//! the CRI request (or, when it named none, per `port` query parameter),
//! each opened with the port (u16, little-endian).
//!
//! A session ends as the kubelet ends it: (exec/attach) the `Status` on the
//! error channel, then a close frame with code 1000, which client-go reads
//! as the end of every channel (any other close, or none, is an error to
//! it), then the client's close frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::backend::{BackendError, Process};
use crate::protocol::{self, Outcome, ResizeDecoder};
use crate::server::{Inner, Target};
use crate::session::{self, CHUNK, Channels};
use crate::ws_tunnel::{Tunnel, normal_close};

/// The largest message (and frame) we take. client-go sends one 32 KiB read
/// of stdin per message (44 KiB as base64); browser terminals send a paste
/// as one message. The default, 64 MiB, would let one message cost that.
const MAX_MESSAGE: usize = 1 << 20;
/// Messages waiting for the socket; each carries at most one [`CHUNK`]
/// (44 KiB as base64), so this holds under 400 KiB.
const OUT_MESSAGES: usize = 8;
/// Incoming pieces of at most [`CHUNK`] waiting for their channel.
const IN_PIECES: usize = 8;
/// How long the close handshake may take: our close frame reaching a
/// client that may not read, then its answer.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Exec/attach channels (stdin to resize); v5 closes only these.
const REMOTE_COMMAND_CHANNELS: u8 = 5;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum FrameError {
    #[error("v5 close signal of {0} bytes (it is the signal byte and one channel)")]
    CloseSignalLength(usize),
    #[error("v5 close signal for channel {0}, which does not exist")]
    CloseSignalChannel(u8),
}

#[derive(Clone, Copy)]
struct Framing {
    base64: bool,
    v5: bool,
}

impl Framing {
    fn encode(&self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::from((b'0' + channel) as char);
            text.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
            Message::text(text)
        } else {
            let mut bytes = Vec::with_capacity(data.len() + 1);
            bytes.push(channel);
            bytes.extend_from_slice(data);
            Message::binary(bytes)
        }
    }

    /// (channel, data) of a data message (v5's close signal is channel
    /// 255 with the closed channel as its data); `None` for anything else.
    /// A malformed close signal ends the session, as in the kubelet.
    fn decode(&self, msg: Message) -> Result<Option<(u8, Vec<u8>)>, FrameError> {
        Ok(match msg {
            Message::Binary(b) if !self.base64 && !b.is_empty() => {
                if self.v5 && b[0] == protocol::CH_CLOSE {
                    let [_, channel] = b[..] else {
                        return Err(FrameError::CloseSignalLength(b.len()));
                    };
                    if channel >= REMOTE_COMMAND_CHANNELS {
                        return Err(FrameError::CloseSignalChannel(channel));
                    }
                }
                Some((b[0], b[1..].to_vec()))
            }
            Message::Text(t) if self.base64 && !t.is_empty() => {
                let bytes = t.as_bytes();
                let Some(channel) = bytes[0].checked_sub(b'0') else {
                    return Ok(None);
                };
                base64::engine::general_purpose::STANDARD
                    .decode(&bytes[1..])
                    .ok()
                    .map(|data| (channel, data))
            }
            _ => None,
        })
    }
}

/// Last traffic in either direction, for the idle timeout.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    async fn idle(&self, limit: Duration) {
        loop {
            let deadline =
                self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// An upgraded connection as the byte stream of a SPDY session tunnelled
/// in it, with the same message cap as the channel protocols.
pub(crate) async fn tunnel<IO>(io: IO) -> Tunnel<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    Tunnel::new(WebSocketStream::from_raw_socket(io, Role::Server, Some(config())).await)
}

/// A WebSocket exec/attach/port-forward session: channel set-up by
/// protocol, then the pumps and the close. Long for the same reason as
/// the SPDY session: the protocol's versions are handled in one place.
pub(crate) async fn serve<IO>(
    inner: Arc<Inner>,
    io: IO,
    target: Target,
    subprotocol: &'static str,
    query: &str,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let framing = Framing {
        base64: subprotocol.contains("base64"),
        v5: subprotocol == protocol::WS_V5,
    };
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config())).await;
    let (mut sink, mut source) = ws.split();
    let activity = Arc::new(Activity {
        epoch: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    // One writer: everything to the client goes through `out`.
    let (out, mut out_rx) = mpsc::channel::<Message>(OUT_MESSAGES);
    let writer_activity = activity.clone();
    let mut writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            let last = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() {
                return;
            }
            writer_activity.touch();
            if last {
                return;
            }
        }
        let _ = sink.close().await;
    });
    // Incoming data by channel, in pieces of at most CHUNK so that what
    // waits is bounded in bytes; the reader ends when the client goes.
    let (incoming_tx, incoming) = mpsc::channel::<(u8, Vec<u8>)>(IN_PIECES);
    let (gone_tx, gone) = session::gone_signal();
    let reader_activity = activity.clone();
    let idle_limit = inner.config.idle_timeout;
    let mut reader = tokio::spawn(async move {
        let read = async {
            // Once nobody takes the channels' data, it is dropped: the
            // reader goes on to the client's close frame.
            let mut incoming_tx = Some(incoming_tx);
            while let Some(Ok(msg)) = source.next().await {
                reader_activity.touch();
                if matches!(msg, Message::Close(_)) {
                    return;
                }
                let (channel, data) = match framing.decode(msg) {
                    Ok(Some(decoded)) => decoded,
                    Ok(None) => continue,
                    Err(err) => {
                        tracing::debug!("WebSocket session: {err}");
                        return;
                    }
                };
                let mut rest = &data[..];
                while let Some(tx) = &incoming_tx {
                    let (piece, tail) = rest.split_at(rest.len().min(CHUNK));
                    if tx.send((channel, piece.to_vec())).await.is_err() {
                        incoming_tx = None;
                    }
                    rest = tail;
                    if rest.is_empty() {
                        break;
                    }
                }
            }
        };
        tokio::select! {
            _ = read => {}
            _ = reader_activity.idle(idle_limit) => tracing::debug!("WebSocket session idle: closing"),
        }
        drop(gone_tx);
    });

    match target {
        Target::PortForward(req) => {
            let ports: Vec<u16> = if req.ports.is_empty() {
                query
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("port="))
                    .filter_map(|p| p.parse().ok())
                    .collect()
            } else {
                req.ports.clone()
            };
            port_forward(inner, req, ports, framing, out.clone(), incoming, gone).await;
        }
        Target::Exec(req) => {
            let backend = inner.backend.clone();
            let cmd = req.cmd.clone();
            let flags = (req.stdin, req.stdout, req.stderr);
            let start = async move { backend.exec(&req).await };
            remote_command(start, flags, cmd, framing, out.clone(), incoming, gone).await;
        }
        Target::Attach(req) => {
            let backend = inner.backend.clone();
            let flags = (req.stdin, req.stdout, req.stderr);
            let start = async move { backend.attach(&req).await };
            remote_command(
                start,
                flags,
                Vec::new(),
                framing,
                out.clone(),
                incoming,
                gone,
            )
            .await;
        }
    }
    let closing = async {
        let _ = out.send(normal_close()).await;
        drop(out);
        let _ = (&mut writer).await;
        let _ = (&mut reader).await;
    };
    if tokio::time::timeout(CLOSE_WAIT, closing).await.is_err() {
        writer.abort();
        reader.abort();
    }
}

async fn remote_command(
    start: impl std::future::Future<Output = Result<Process, BackendError>>,
    (stdin, stdout, stderr): (bool, bool, bool),
    cmd: Vec<String>,
    framing: Framing,
    out: mpsc::Sender<Message>,
    mut incoming: mpsc::Receiver<(u8, Vec<u8>)>,
    gone: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    if framing.v5 {
        // As the API server's v5 server: an empty message on the lowest
        // channel we write tells the client the session is up.
        let ready = match (stdout, stderr) {
            (true, _) => protocol::CH_STDOUT,
            (false, true) => protocol::CH_STDERR,
            (false, false) => protocol::CH_ERROR,
        };
        let _ = out.send(framing.encode(ready, &[])).await;
    }
    let process = match start.await {
        Ok(p) => p,
        Err(err) => {
            let status = protocol::status_json(&Outcome::Error(err.to_string()), &cmd);
            let _ = out.send(framing.encode(protocol::CH_ERROR, &status)).await;
            return;
        }
    };
    let (stdin_tx, stdin_rx) = mpsc::channel(16);
    let (resize_tx, resize_rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        let mut decoder = ResizeDecoder::default();
        while let Some((channel, data)) = incoming.recv().await {
            match channel {
                protocol::CH_STDIN => {
                    if let Some(tx) = &stdin_tx {
                        let _ = tx.send(data).await;
                    }
                }
                protocol::CH_RESIZE => {
                    for size in decoder.feed(&data).unwrap_or_default() {
                        let _ = resize_tx.send(size).await;
                    }
                }
                protocol::CH_CLOSE if framing.v5 && data.first() == Some(&protocol::CH_STDIN) => {
                    stdin_tx = None;
                }
                _ => {}
            }
        }
    });
    let mut writers = tokio::task::JoinSet::new();
    let mut output = |wanted: bool, channel: u8| {
        wanted.then(|| {
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
            let out = out.clone();
            writers.spawn(async move {
                while let Some(chunk) = rx.recv().await {
                    if out.send(framing.encode(channel, &chunk)).await.is_err() {
                        return;
                    }
                }
            });
            tx
        })
    };
    let channels = Channels {
        stdin: stdin.then_some(stdin_rx),
        stdout: output(stdout, protocol::CH_STDOUT),
        stderr: output(stderr, protocol::CH_STDERR),
        resize: Some(resize_rx),
        gone,
    };
    if let Some(outcome) = session::run(process, channels).await {
        while writers.join_next().await.is_some() {}
        let status = protocol::status_json(&outcome, &cmd);
        let _ = out.send(framing.encode(protocol::CH_ERROR, &status)).await;
    }
}

async fn port_forward(
    inner: Arc<Inner>,
    req: crate::backend::PortForwardRequest,
    ports: Vec<u16>,
    framing: Framing,
    out: mpsc::Sender<Message>,
    mut incoming: mpsc::Receiver<(u8, Vec<u8>)>,
    mut gone: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    if ports.is_empty() {
        let _ = out
            .send(framing.encode(1, b"port-forward needs at least one port (in the CRI request or a port query parameter)"))
            .await;
        return;
    }
    let mut to_pod = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, error_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let prefix = port.to_le_bytes();
        let _ = out.send(framing.encode(data_ch, &prefix)).await;
        let _ = out.send(framing.encode(error_ch, &prefix)).await;
        match inner.backend.port_forward(&req, port).await {
            Ok(tcp) => {
                let (mut rd, wr) = tcp.into_split();
                to_pod.push(Some(wr));
                let out = out.clone();
                tasks.spawn(async move {
                    let mut buf = vec![0u8; CHUNK];
                    while let Ok(n) = rd.read(&mut buf).await {
                        if n == 0 || out.send(framing.encode(data_ch, &buf[..n])).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Err(err) => {
                to_pod.push(None);
                let _ = out
                    .send(framing.encode(error_ch, err.to_string().as_bytes()))
                    .await;
            }
        }
    }
    loop {
        tokio::select! {
            msg = incoming.recv() => {
                let Some((channel, data)) = msg else { break };
                if channel % 2 == 0
                    && let Some(Some(wr)) = to_pod.get_mut(channel as usize / 2)
                    && wr.write_all(&data).await.is_err()
                {
                    to_pod[channel as usize / 2] = None;
                }
            }
            _ = &mut gone => break,
        }
    }
    tasks.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    const V5: Framing = Framing {
        base64: false,
        v5: true,
    };
    const V4: Framing = Framing {
        base64: false,
        v5: false,
    };
    const V4_BASE64: Framing = Framing {
        base64: true,
        v5: false,
    };

    #[test]
    fn binary_messages_carry_the_channel_in_their_first_byte() {
        let msg = V5.encode(protocol::CH_ERROR, br#"{"status":"Success"}"#);
        let Message::Binary(bytes) = &msg else {
            panic!("{msg:?}")
        };
        assert_eq!(bytes[0], 3);
        assert_eq!(&bytes[1..], br#"{"status":"Success"}"#);
        assert_eq!(
            V5.encode(protocol::CH_STDOUT, b""),
            Message::binary(vec![1])
        );
        assert_eq!(
            V4.decode(Message::binary(
                b"\x04{\"Width\":80,\"Height\":24}\n".to_vec()
            )),
            Ok(Some((4, b"{\"Width\":80,\"Height\":24}\n".to_vec())))
        );
        // Text is no binary protocol's, and an empty message has no channel.
        assert_eq!(V5.decode(Message::text("0abc")), Ok(None));
        assert_eq!(V5.decode(Message::binary(Vec::new())), Ok(None));
    }

    #[test]
    fn base64_messages_carry_the_channel_as_a_digit() {
        assert_eq!(
            V4_BASE64.encode(protocol::CH_STDERR, b"err\n"),
            Message::text("2ZXJyCg==")
        );
        assert_eq!(
            V4_BASE64.decode(Message::text("0aGk=")),
            Ok(Some((0, b"hi".to_vec())))
        );
        assert_eq!(V4_BASE64.decode(Message::text("0!!")), Ok(None));
        assert_eq!(V4_BASE64.decode(Message::binary(vec![0, 1])), Ok(None));
    }

    #[test]
    fn v5_close_signals_name_one_remote_command_channel() {
        assert_eq!(
            V5.decode(Message::binary(vec![255, 0])),
            Ok(Some((protocol::CH_CLOSE, vec![protocol::CH_STDIN])))
        );
        assert_eq!(
            V5.decode(Message::binary(vec![255])),
            Err(FrameError::CloseSignalLength(1))
        );
        assert_eq!(
            V5.decode(Message::binary(vec![255, 0, 0])),
            Err(FrameError::CloseSignalLength(3))
        );
        assert_eq!(
            V5.decode(Message::binary(vec![255, 5])),
            Err(FrameError::CloseSignalChannel(5))
        );
        // Before v5, 255 is a channel like any other (and unused).
        assert_eq!(
            V4.decode(Message::binary(vec![255])),
            Ok(Some((255, Vec::new())))
        );
    }

    #[test]
    fn sessions_close_with_1000() {
        let Message::Close(Some(frame)) = normal_close() else {
            panic!()
        };
        assert_eq!(u16::from(frame.code), 1000);
    }
}
