//! The Kubernetes protocols over WebSocket: each message is one channel
//! byte then data (base64 protocols: the channel as an ASCII digit, then
//! base64 text). Exec/attach channels are stdin 0, stdout 1, stderr 2,
//! error 3, resize 4; v5 adds `[255, channel]` to close a channel.
//! Port-forward has a data (2i) and an error (2i+1) channel per port of
//! the CRI request (or, when it named none, per `port` query parameter),
//! each opened with the port (u16, little-endian).

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

/// The largest message (and frame) we take. client-go sends one 32 KiB read
/// of stdin per message (44 KiB as base64); browser terminals send a paste
/// as one message. The default, 64 MiB, would let one message cost that.
const MAX_MESSAGE: usize = 1 << 20;
/// Messages waiting for the socket; each carries at most one [`CHUNK`]
/// (44 KiB as base64), so this holds under 400 KiB.
const OUT_MESSAGES: usize = 8;
/// Incoming pieces of at most [`CHUNK`] waiting for their channel.
const IN_PIECES: usize = 8;

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

    /// (channel, data) of a data message; `None` for anything else.
    fn decode(&self, msg: Message) -> Option<(u8, Vec<u8>)> {
        match msg {
            Message::Binary(b) if !self.base64 && !b.is_empty() => Some((b[0], b[1..].to_vec())),
            Message::Text(t) if self.base64 && !t.is_empty() => {
                let bytes = t.as_bytes();
                let channel = bytes[0].checked_sub(b'0')?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&bytes[1..])
                    .ok()?;
                Some((channel, data))
            }
            _ => None,
        }
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
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (mut sink, mut source) = ws.split();
    let activity = Arc::new(Activity {
        epoch: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    // One writer: everything to the client goes through `out`.
    let (out, mut out_rx) = mpsc::channel::<Message>(OUT_MESSAGES);
    let writer_activity = activity.clone();
    let writer = tokio::spawn(async move {
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
    tokio::spawn(async move {
        let read = async {
            while let Some(Ok(msg)) = source.next().await {
                reader_activity.touch();
                if matches!(msg, Message::Close(_)) {
                    return;
                }
                let Some((channel, data)) = framing.decode(msg) else {
                    continue;
                };
                let mut rest = &data[..];
                loop {
                    let (piece, tail) = rest.split_at(rest.len().min(CHUNK));
                    if incoming_tx.send((channel, piece.to_vec())).await.is_err() {
                        return;
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
    let _ = out.send(Message::Close(None)).await;
    drop(out);
    let _ = writer.await;
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
