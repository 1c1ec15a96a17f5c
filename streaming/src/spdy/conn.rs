//! A SPDY/3.1 session, server side: the peer opens streams (SYN_STREAM),
//! we reply to each at once (as the kubelet's streaming server does) and
//! hand it to the application; DATA flows both ways under flow control;
//! PINGs are answered; the session ends on EOF, GOAWAY, a protocol error,
//! idle timeout or [`Session::shutdown`].
//!
//! Flow control: we always grant receive credit with WINDOW_UPDATE as the
//! application reads. We enforce the peer's windows on what we send only
//! once the peer shows it does flow control (a WINDOW_UPDATE or an
//! INITIAL_WINDOW_SIZE setting): Go's spdystream, which kubectl and the
//! kubelet use, never sends WINDOW_UPDATE, and waiting for credit that
//! never comes would stall every stream after 64 KiB.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, watch};

use super::flow::{DEFAULT_WINDOW, RecvWindow, SendWindow};
use super::frame::{Codec, FLAG_FIN, Frame, rst, settings};
use super::zlib::HeaderBlock;

/// DATA frames we send carry at most this much.
const MAX_DATA_CHUNK: usize = 32 << 10;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("SPDY session closed")]
    SessionClosed,
    #[error("SPDY stream {0} was reset by the peer")]
    Reset(u32),
}

/// Our view of one stream's sending side.
struct StreamState {
    send: SendWindow,
    recv: RecvWindow,
    data: Option<mpsc::UnboundedSender<Vec<u8>>>,
    reset: bool,
}

struct Shared {
    out: mpsc::UnboundedSender<Frame>,
    streams: Mutex<Streams>,
    /// Woken when send windows grow or the session or a stream ends.
    credit: Notify,
    closed: watch::Sender<bool>,
    enforce_send_windows: AtomicBool,
    /// Milliseconds since `epoch` of the last frame in either direction.
    last_activity: AtomicU64,
    epoch: Instant,
}

struct Streams {
    map: HashMap<u32, StreamState>,
    session_send: SendWindow,
    session_recv: RecvWindow,
    initial_send_window: u32,
    last_peer_stream: u32,
}

impl Shared {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_activity.store(ms, Ordering::Relaxed);
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    fn close(&self) {
        self.closed.send_replace(true);
        let mut streams = self.streams.lock().unwrap();
        for state in streams.map.values_mut() {
            state.data = None;
        }
        drop(streams);
        self.credit.notify_waiters();
    }

    fn send(&self, frame: Frame) -> Result<(), StreamError> {
        self.out.send(frame).map_err(|_| StreamError::SessionClosed)
    }
}

/// A stream the peer opened.
pub struct Stream {
    pub id: u32,
    pub headers: HeaderBlock,
    data: mpsc::UnboundedReceiver<Vec<u8>>,
    writer: StreamWriter,
}

impl Stream {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next chunk the peer sent; `None` once it half-closed (FIN), reset
    /// the stream or the session ended.
    pub async fn read(&mut self) -> Option<Vec<u8>> {
        let chunk = self.data.recv().await?;
        let shared = &self.writer.shared;
        let mut streams = shared.streams.lock().unwrap();
        let n = chunk.len() as u32;
        let mut updates = Vec::new();
        if let Some(delta) = streams.session_recv.consumed(n) {
            updates.push((0, delta));
        }
        if let Some(state) = streams.map.get_mut(&self.id)
            && let Some(delta) = state.recv.consumed(n)
        {
            updates.push((self.id, delta));
        }
        drop(streams);
        for (stream_id, delta) in updates {
            let _ = shared.send(Frame::WindowUpdate { stream_id, delta });
        }
        Some(chunk)
    }

    pub fn writer(&self) -> StreamWriter {
        self.writer.clone()
    }

    /// Splits into the reading half and a writer.
    pub fn split(self) -> (StreamReader, StreamWriter) {
        let writer = self.writer.clone();
        (StreamReader { stream: self }, writer)
    }
}

/// The reading half of a [`Stream`].
pub struct StreamReader {
    stream: Stream,
}

impl StreamReader {
    pub async fn read(&mut self) -> Option<Vec<u8>> {
        self.stream.read().await
    }
}

/// Sends on one stream; cheap to clone.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    shared: Arc<Shared>,
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `data`, waiting for window credit when the peer does flow
    /// control.
    pub async fn write(&self, mut data: &[u8]) -> Result<(), StreamError> {
        while !data.is_empty() {
            let n = self.grant(data.len().min(MAX_DATA_CHUNK) as u32).await? as usize;
            self.shared.send(Frame::Data {
                stream_id: self.id,
                flags: 0,
                data: data[..n].to_vec(),
            })?;
            data = &data[n..];
        }
        Ok(())
    }

    async fn grant(&self, wanted: u32) -> Result<u32, StreamError> {
        loop {
            let notified = self.shared.credit.notified();
            {
                if self.shared.is_closed() {
                    return Err(StreamError::SessionClosed);
                }
                let mut streams = self.shared.streams.lock().unwrap();
                let enforce = self.shared.enforce_send_windows.load(Ordering::Relaxed);
                let Streams {
                    map, session_send, ..
                } = &mut *streams;
                let state = map.get_mut(&self.id).ok_or(StreamError::Reset(self.id))?;
                if state.reset {
                    return Err(StreamError::Reset(self.id));
                }
                if !enforce {
                    return Ok(wanted);
                }
                let room = wanted
                    .min(state.send.available())
                    .min(session_send.available());
                if room > 0 {
                    state.send.take(room);
                    session_send.take(room);
                    return Ok(room);
                }
            }
            notified.await;
        }
    }

    /// Half-closes our side (an empty DATA frame with FIN).
    pub fn close(&self) -> Result<(), StreamError> {
        self.shared.send(Frame::Data {
            stream_id: self.id,
            flags: FLAG_FIN,
            data: Vec::new(),
        })
    }

    /// Resets the stream.
    pub fn reset(&self, status: u32) -> Result<(), StreamError> {
        self.shared.send(Frame::RstStream {
            stream_id: self.id,
            status,
        })
    }
}

/// One session; dropping it does not end it, [`Session::shutdown`] does.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

impl Session {
    /// Starts serving `io`. Streams the peer opens arrive on the receiver,
    /// which closes when the session ends. `idle` ends a session without
    /// frames in either direction for that long.
    pub fn serve<IO>(io: IO, idle: Duration) -> (Session, mpsc::Receiver<Stream>)
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (out, out_rx) = mpsc::unbounded_channel();
        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            out,
            streams: Mutex::new(Streams {
                map: HashMap::new(),
                session_send: SendWindow::new(DEFAULT_WINDOW),
                session_recv: RecvWindow::new(DEFAULT_WINDOW),
                initial_send_window: DEFAULT_WINDOW,
                last_peer_stream: 0,
            }),
            credit: Notify::new(),
            closed,
            enforce_send_windows: AtomicBool::new(false),
            last_activity: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let (accept_tx, accept_rx) = mpsc::channel(16);
        let (read, write) = tokio::io::split(io);
        // One codec, two halves: the writer owns compression, the reader
        // decompression; they share nothing else.
        tokio::spawn(write_loop(write, out_rx, shared.clone()));
        tokio::spawn(read_loop(read, accept_tx, shared.clone()));
        tokio::spawn(idle_watch(shared.clone(), idle));
        (Session { shared }, accept_rx)
    }

    /// Ends the session: GOAWAY, then the connection closes.
    pub fn shutdown(&self) {
        let last = self.shared.streams.lock().unwrap().last_peer_stream;
        let _ = self.shared.send(Frame::GoAway {
            last_good_stream_id: last,
            status: 0,
        });
        self.shared.close();
    }

    /// Resolves when the session has ended.
    pub async fn closed(&self) {
        let mut rx = self.shared.closed.subscribe();
        wait_closed(&mut rx).await;
    }
}

async fn idle_watch(shared: Arc<Shared>, idle: Duration) {
    let mut closed = shared.closed.subscribe();
    loop {
        let last = Duration::from_millis(shared.last_activity.load(Ordering::Relaxed));
        let deadline = shared.epoch + last + idle;
        if Instant::now() >= deadline {
            tracing::debug!("SPDY session idle for {idle:?}: closing");
            shared.close();
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = wait_closed(&mut closed) => return,
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    mut frames: mpsc::UnboundedReceiver<Frame>,
    shared: Arc<Shared>,
) {
    let mut codec = Codec::default();
    let mut buf = Vec::with_capacity(64 << 10);
    let mut closed = shared.closed.subscribe();
    loop {
        let frame = tokio::select! {
            f = frames.recv() => f,
            _ = wait_closed(&mut closed) => {
                // Drain what was queued before the close (GOAWAY, last data).
                frames.close();
                frames.recv().await
            }
        };
        let Some(frame) = frame else { break };
        buf.clear();
        codec.encode(&frame, &mut buf);
        // Batch whatever else is already queued into one write.
        while buf.len() < 256 << 10 {
            match frames.try_recv() {
                Ok(f) => codec.encode(&f, &mut buf),
                Err(_) => break,
            }
        }
        if io.write_all(&buf).await.is_err() || io.flush().await.is_err() {
            break;
        }
        shared.touch();
    }
    let _ = io.shutdown().await;
    shared.close();
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut io: R,
    accept: mpsc::Sender<Stream>,
    shared: Arc<Shared>,
) {
    let mut codec = Codec::default();
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut closed = shared.closed.subscribe();
    let mut goaway = false;
    'read: loop {
        let n = tokio::select! {
            r = io.read_buf(&mut buf) => r.unwrap_or(0),
            _ = wait_closed(&mut closed) => break,
        };
        if n == 0 {
            break;
        }
        shared.touch();
        let mut at = 0;
        loop {
            match codec.decode(&buf[at..]) {
                Ok(None) => break,
                Ok(Some((frame, used))) => {
                    at += used;
                    if !handle(frame, &shared, &accept, &mut goaway) {
                        break 'read;
                    }
                }
                Err(err) => {
                    tracing::debug!("SPDY protocol error: {err}");
                    let last = shared.streams.lock().unwrap().last_peer_stream;
                    let _ = shared.send(Frame::GoAway {
                        last_good_stream_id: last,
                        status: 1,
                    });
                    break 'read;
                }
            }
        }
        buf.drain(..at);
    }
    shared.close();
}

/// Applies one frame; false ends the session.
fn handle(
    frame: Frame,
    shared: &Arc<Shared>,
    accept: &mpsc::Sender<Stream>,
    goaway: &mut bool,
) -> bool {
    match frame {
        Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } => {
            let mut streams = shared.streams.lock().unwrap();
            // Peer (client) streams are odd and increasing.
            if stream_id % 2 == 0 || stream_id <= streams.last_peer_stream {
                drop(streams);
                let _ = shared.send(Frame::RstStream {
                    stream_id,
                    status: rst::PROTOCOL_ERROR,
                });
                return true;
            }
            streams.last_peer_stream = stream_id;
            if *goaway {
                drop(streams);
                let _ = shared.send(Frame::RstStream {
                    stream_id,
                    status: rst::REFUSED_STREAM,
                });
                return true;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let initial = streams.initial_send_window;
            streams.map.insert(
                stream_id,
                StreamState {
                    send: SendWindow::new(initial),
                    recv: RecvWindow::new(DEFAULT_WINDOW),
                    data: (flags & FLAG_FIN == 0).then_some(tx),
                    reset: false,
                },
            );
            drop(streams);
            let _ = shared.send(Frame::SynReply {
                stream_id,
                flags: 0,
                headers: Vec::new(),
            });
            let stream = Stream {
                id: stream_id,
                headers,
                data: rx,
                writer: StreamWriter {
                    id: stream_id,
                    shared: shared.clone(),
                },
            };
            if accept.try_send(stream).is_err() {
                let _ = shared.send(Frame::RstStream {
                    stream_id,
                    status: rst::REFUSED_STREAM,
                });
            }
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            let mut streams = shared.streams.lock().unwrap();
            let Streams {
                map, session_recv, ..
            } = &mut *streams;
            let enforce = shared.enforce_send_windows.load(Ordering::Relaxed);
            let n = data.len() as u32;
            // Peers without flow control may overrun our windows; see the
            // module doc.
            if session_recv.receive(n).is_err() && enforce {
                return false;
            }
            match map.get_mut(&stream_id) {
                Some(state) if state.data.is_some() => {
                    if state.recv.receive(n).is_err() && enforce {
                        state.data = None;
                        drop(streams);
                        let _ = shared.send(Frame::RstStream {
                            stream_id,
                            status: rst::FLOW_CONTROL_ERROR,
                        });
                        return true;
                    }
                    if !data.is_empty()
                        && let Some(tx) = &state.data
                    {
                        let _ = tx.send(data);
                    }
                    if flags & FLAG_FIN != 0 {
                        state.data = None;
                    }
                }
                Some(_) => {
                    drop(streams);
                    let _ = shared.send(Frame::RstStream {
                        stream_id,
                        status: rst::STREAM_ALREADY_CLOSED,
                    });
                }
                None => {
                    drop(streams);
                    let _ = shared.send(Frame::RstStream {
                        stream_id,
                        status: rst::INVALID_STREAM,
                    });
                }
            }
        }
        Frame::Headers {
            stream_id, flags, ..
        } => {
            if flags & FLAG_FIN != 0
                && let Some(state) = shared.streams.lock().unwrap().map.get_mut(&stream_id)
            {
                state.data = None;
            }
        }
        Frame::RstStream { stream_id, .. } => {
            if let Some(state) = shared.streams.lock().unwrap().map.get_mut(&stream_id) {
                state.data = None;
                state.reset = true;
            }
            shared.credit.notify_waiters();
        }
        Frame::Settings { entries, .. } => {
            for e in entries {
                if e.id == settings::INITIAL_WINDOW_SIZE && e.value as i64 <= 0x7fff_ffff {
                    shared.enforce_send_windows.store(true, Ordering::Relaxed);
                    let mut streams = shared.streams.lock().unwrap();
                    let old = streams.initial_send_window;
                    streams.initial_send_window = e.value;
                    for state in streams.map.values_mut() {
                        state.send.reinitialize(old, e.value);
                    }
                }
            }
            shared.credit.notify_waiters();
        }
        Frame::WindowUpdate { stream_id, delta } => {
            shared.enforce_send_windows.store(true, Ordering::Relaxed);
            let mut streams = shared.streams.lock().unwrap();
            if stream_id == 0 {
                if streams.session_send.credit(delta).is_err() {
                    return false;
                }
            } else if let Some(state) = streams.map.get_mut(&stream_id)
                && state.send.credit(delta).is_err()
            {
                state.reset = true;
                state.data = None;
                drop(streams);
                let _ = shared.send(Frame::RstStream {
                    stream_id,
                    status: rst::FLOW_CONTROL_ERROR,
                });
            }
            shared.credit.notify_waiters();
        }
        Frame::Ping { id } => {
            // Only the peer's (odd) pings are answered; ours would be even.
            if id % 2 == 1 {
                let _ = shared.send(Frame::Ping { id });
            }
        }
        Frame::GoAway { .. } => {
            // No new streams; the ones open run to their end.
            *goaway = true;
        }
        Frame::SynReply { .. } | Frame::Unknown { .. } => {}
    }
    true
}

async fn wait_closed(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spdy::frame::{FLAG_FIN, Setting};
    use tokio::io::DuplexStream;

    /// The client side of a test session, speaking through our own codec.
    struct Peer {
        io: DuplexStream,
        codec: Codec,
        buf: Vec<u8>,
    }

    impl Peer {
        async fn send(&mut self, frame: Frame) {
            let mut out = Vec::new();
            self.codec.encode(&frame, &mut out);
            self.io.write_all(&out).await.unwrap();
        }

        async fn recv(&mut self) -> Option<Frame> {
            loop {
                if let Some((frame, used)) = self.codec.decode(&self.buf).unwrap() {
                    self.buf.drain(..used);
                    return Some(frame);
                }
                if self.io.read_buf(&mut self.buf).await.ok()? == 0 {
                    return None;
                }
            }
        }

        async fn syn(&mut self, stream_id: u32, flags: u8) {
            self.send(Frame::SynStream {
                stream_id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags,
                headers: vec![("streamtype".into(), "stdout".into())],
            })
            .await;
        }
    }

    fn start(idle: Duration) -> (Peer, Session, mpsc::Receiver<Stream>) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (session, incoming) = Session::serve(b, idle);
        let peer = Peer {
            io: a,
            codec: Codec::default(),
            buf: Vec::new(),
        };
        (peer, session, incoming)
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn streams_are_replied_to_and_carry_data_both_ways() {
        let (mut peer, _session, mut incoming) = start(LONG);
        peer.syn(1, 0).await;
        let mut stream = incoming.recv().await.unwrap();
        assert_eq!(stream.header("streamtype"), Some("stdout"));
        assert!(matches!(
            peer.recv().await,
            Some(Frame::SynReply { stream_id: 1, .. })
        ));
        peer.send(Frame::Data {
            stream_id: 1,
            flags: FLAG_FIN,
            data: b"in".to_vec(),
        })
        .await;
        assert_eq!(stream.read().await.as_deref(), Some(&b"in"[..]));
        assert_eq!(stream.read().await, None);
        let w = stream.writer();
        w.write(b"out").await.unwrap();
        w.close().unwrap();
        assert_eq!(
            peer.recv().await,
            Some(Frame::Data {
                stream_id: 1,
                flags: 0,
                data: b"out".to_vec()
            })
        );
        assert!(peer.recv().await.unwrap().is_fin());
        peer.send(Frame::Ping { id: 7 }).await;
        assert_eq!(peer.recv().await, Some(Frame::Ping { id: 7 }));
    }

    #[tokio::test]
    async fn send_windows_hold_data_back_once_the_peer_does_flow_control() {
        let (mut peer, _session, mut incoming) = start(LONG);
        peer.send(Frame::Settings {
            flags: 0,
            entries: vec![Setting {
                flags: 0,
                id: settings::INITIAL_WINDOW_SIZE,
                value: 10,
            }],
        })
        .await;
        peer.syn(1, 0).await;
        let stream = incoming.recv().await.unwrap();
        peer.recv().await; // SYN_REPLY
        let w = stream.writer();
        let writing = tokio::spawn(async move { w.write(&[1u8; 25]).await });
        let mut got = 0;
        while got < 10 {
            match peer.recv().await.unwrap() {
                Frame::Data { data, .. } => got += data.len(),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, 10);
        assert!(!writing.is_finished());
        peer.send(Frame::WindowUpdate {
            stream_id: 1,
            delta: 15,
        })
        .await;
        while got < 25 {
            if let Frame::Data { data, .. } = peer.recv().await.unwrap() {
                got += data.len();
            }
        }
        writing.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn reading_grants_window_credit() {
        let (mut peer, _session, mut incoming) = start(LONG);
        peer.syn(1, 0).await;
        let mut stream = incoming.recv().await.unwrap();
        peer.recv().await; // SYN_REPLY
        let half = vec![0u8; (DEFAULT_WINDOW / 2) as usize];
        peer.send(Frame::Data {
            stream_id: 1,
            flags: 0,
            data: half.clone(),
        })
        .await;
        assert_eq!(stream.read().await.unwrap().len(), half.len());
        let mut updates = Vec::new();
        while updates.len() < 2 {
            if let Some(Frame::WindowUpdate { stream_id, delta }) = peer.recv().await {
                updates.push((stream_id, delta));
            }
        }
        updates.sort();
        assert_eq!(updates, [(0, DEFAULT_WINDOW / 2), (1, DEFAULT_WINDOW / 2)]);
    }

    #[tokio::test]
    async fn bad_streams_are_reset_and_garbage_ends_the_session() {
        let (mut peer, session, _incoming) = start(LONG);
        // Even (server-side) id from the client.
        peer.syn(2, 0).await;
        assert!(matches!(
            peer.recv().await,
            Some(Frame::RstStream {
                stream_id: 2,
                status: rst::PROTOCOL_ERROR
            })
        ));
        peer.send(Frame::Data {
            stream_id: 9,
            flags: 0,
            data: vec![1],
        })
        .await;
        assert!(matches!(
            peer.recv().await,
            Some(Frame::RstStream {
                stream_id: 9,
                status: rst::INVALID_STREAM
            })
        ));
        peer.io
            .write_all(&[0x80, 2, 0, 1, 0, 0, 0, 0])
            .await
            .unwrap();
        assert!(matches!(
            peer.recv().await,
            Some(Frame::GoAway { status: 1, .. })
        ));
        session.closed().await;
        assert_eq!(peer.recv().await, None);
    }

    #[tokio::test]
    async fn an_idle_session_closes() {
        let (mut peer, session, mut incoming) = start(Duration::from_millis(200));
        peer.syn(1, 0).await;
        let mut stream = incoming.recv().await.unwrap();
        session.closed().await;
        assert_eq!(stream.read().await, None);
        assert!(stream.writer().write(b"x").await.is_err());
    }
}
