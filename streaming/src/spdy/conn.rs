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
//!
//! Memory: nothing a peer does grows a session past fixed caps, whether or
//! not it does flow control. Data it sends waits in a stream's queue only
//! up to [`STREAM_RECV_BYTES`] (and [`SESSION_RECV_BYTES`] in all); beyond
//! that we stop reading the socket, so TCP holds the peer back. Data we
//! send waits for the socket only up to [`OUT_QUEUE_BYTES`]; beyond that
//! writers wait, so a peer that stops reading stops the container's output
//! at its pipe. Replies the peer's frames cause are capped at
//! [`MAX_QUEUED_REPLIES`] unsent (a flood ends the session), streams at
//! [`MAX_STREAMS`] open, and a stream's entry goes when both sides are done.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, watch};

use super::flow::{DEFAULT_WINDOW, RecvWindow, SendWindow};
use super::frame::{self, Codec, FLAG_FIN, Frame, rst, settings};
use super::zlib::HeaderBlock;

/// DATA frames we send carry at most this much.
const MAX_DATA_CHUNK: usize = 32 << 10;
/// DATA bytes of all streams that may wait for the socket: 8 chunks, the
/// size of one batched write.
pub const OUT_QUEUE_BYTES: usize = 256 << 10;
/// Bytes a stream may hold that its reader has not taken: the window we
/// grant, so a peer that does flow control never waits for it.
pub const STREAM_RECV_BYTES: usize = DEFAULT_WINDOW as usize;
/// The same for all streams together (16 streams' worth): a peer cannot
/// multiply the per-stream budget by opening streams.
pub const SESSION_RECV_BYTES: usize = 1 << 20;
/// Streams open at once; more are refused. exec opens 5, port-forward 2
/// per connection.
pub const MAX_STREAMS: usize = 128;
/// Decoded header bytes (names and values) all open streams may hold
/// together: a header block may be 256 KiB, and 128 of them would be 32 MiB.
/// kubectl's streams carry a few dozen bytes each.
pub const SESSION_HEADER_BYTES: usize = 1 << 20;
/// Replies to the peer's frames (SYN_REPLY, PING, RST_STREAM) that may wait
/// for the socket. A peer that causes more without reading is flooding us
/// (as h2 judges ping and reset floods) and the session ends.
pub const MAX_QUEUED_REPLIES: usize = 256;
/// WINDOW_UPDATEs that may wait for the socket; beyond them a reader waits.
const MAX_QUEUED_UPDATES: usize = 64;
/// The largest control frame we take. Header blocks are capped at 256 KiB
/// decoded; twice that leaves room for incompressible ones.
const MAX_CONTROL_PAYLOAD: usize = 512 << 10;
/// How long frames queued before the session ended may still drain to a
/// peer that does not read.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames per socket write.
const BATCH_BYTES: usize = 256 << 10;
const READ_BUF: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("SPDY session closed")]
    SessionClosed,
    #[error("SPDY stream {0} was reset")]
    Reset(u32),
    #[error("SPDY stream {0} is closed")]
    Closed(u32),
}

/// Our view of one stream.
struct StreamState {
    send: SendWindow,
    recv: RecvWindow,
    /// Where the peer's data goes; `None` once the peer half-closed, or
    /// either side reset the stream.
    data: Option<mpsc::UnboundedSender<Vec<u8>>>,
    /// Bytes in `data` the reader has not taken.
    buffered: usize,
    reset: bool,
    /// We sent FIN or RST_STREAM.
    local_closed: bool,
    /// The application dropped every handle on the stream.
    orphaned: bool,
    /// The size of its decoded SYN_STREAM headers, counted in the session's.
    header_bytes: usize,
}

/// One frame waiting for the socket, with the budget it holds.
struct Outgoing {
    frame: Frame,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The peer caused more replies than [`MAX_QUEUED_REPLIES`].
struct Flood;

struct Shared {
    out: mpsc::UnboundedSender<Outgoing>,
    /// Bounds on what waits in `out`: DATA bytes, WINDOW_UPDATEs, replies.
    /// Closed with the session, which wakes whoever waits on them.
    out_bytes: Arc<Semaphore>,
    updates: Arc<Semaphore>,
    replies: Arc<Semaphore>,
    streams: Mutex<Streams>,
    /// Woken when send windows grow or the session or a stream ends.
    credit: Notify,
    /// Woken when a reader took data or went away.
    room: Notify,
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
    /// `buffered` of all streams.
    session_buffered: usize,
    /// `header_bytes` of all streams.
    session_header_bytes: usize,
    initial_send_window: u32,
    last_peer_stream: u32,
}

impl Streams {
    /// Forgets stream `id` once neither side will use it again.
    fn retire(&mut self, id: u32) {
        if self
            .map
            .get(&id)
            .is_some_and(|s| s.data.is_none() && s.buffered == 0 && (s.local_closed || s.orphaned))
        {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: u32) {
        if let Some(state) = self.map.remove(&id) {
            self.session_header_bytes -= state.header_bytes;
        }
    }
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
        for budget in [&self.out_bytes, &self.updates, &self.replies] {
            budget.close();
        }
        let mut streams = berth_host::sync::lock(&self.streams);
        for state in streams.map.values_mut() {
            state.data = None;
        }
        drop(streams);
        self.credit.notify_waiters();
        self.room.notify_waiters();
    }

    /// Queues a frame that is bounded by construction: GOAWAY, and per
    /// stream at most one FIN and one RST_STREAM of ours.
    fn send(&self, frame: Frame) -> Result<(), StreamError> {
        self.out
            .send(Outgoing {
                frame,
                _permit: None,
            })
            .map_err(|_| StreamError::SessionClosed)
    }

    /// Queues a reply to a frame of the peer's.
    fn reply(&self, frame: Frame) -> Result<(), Flood> {
        match self.replies.clone().try_acquire_owned() {
            Ok(permit) => {
                let _ = self.out.send(Outgoing {
                    frame,
                    _permit: Some(permit),
                });
                Ok(())
            }
            Err(TryAcquireError::NoPermits) => Err(Flood),
            // The session is ending anyway.
            Err(TryAcquireError::Closed) => Ok(()),
        }
    }

    async fn window_update(&self, stream_id: u32, delta: u32) {
        if let Ok(permit) = self.updates.clone().acquire_owned().await {
            let _ = self.out.send(Outgoing {
                frame: Frame::WindowUpdate { stream_id, delta },
                _permit: Some(permit),
            });
        }
    }
}

/// Held by a stream's reader and all its writers: when the last goes, the
/// session knows nobody will use the stream again.
struct Handle {
    id: u32,
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut streams = berth_host::sync::lock(&self.shared.streams);
        if let Some(state) = streams.map.get_mut(&self.id) {
            state.orphaned = true;
        }
        streams.retire(self.id);
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
        let shared = &self.writer.handle.shared;
        let n = chunk.len();
        let mut updates = Vec::new();
        {
            let mut streams = berth_host::sync::lock(&shared.streams);
            streams.session_buffered -= n;
            if let Some(delta) = streams.session_recv.consumed(n as u32) {
                updates.push((0, delta));
            }
            if let Some(state) = streams.map.get_mut(&self.id) {
                state.buffered -= n;
                if let Some(delta) = state.recv.consumed(n as u32) {
                    updates.push((self.id, delta));
                }
            }
            streams.retire(self.id);
        }
        shared.room.notify_waiters();
        for (stream_id, delta) in updates {
            shared.window_update(stream_id, delta).await;
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

impl Drop for Stream {
    /// What nobody will read no longer counts against the budgets.
    fn drop(&mut self) {
        // Closed first, so the read loop, once woken, sees nobody reads.
        self.data.close();
        let shared = &self.writer.handle.shared;
        let mut streams = berth_host::sync::lock(&shared.streams);
        if let Some(state) = streams.map.get_mut(&self.id) {
            let left = std::mem::take(&mut state.buffered);
            streams.session_buffered -= left;
        }
        streams.retire(self.id);
        drop(streams);
        shared.room.notify_waiters();
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
    handle: Arc<Handle>,
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.handle.id
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Sends `data`, waiting for window credit when the peer does flow
    /// control, and for room in the session's outgoing queue.
    pub async fn write(&self, mut data: &[u8]) -> Result<(), StreamError> {
        let shared = self.shared();
        while !data.is_empty() {
            let n = self.grant(data.len().min(MAX_DATA_CHUNK) as u32).await? as usize;
            let permit = shared
                .out_bytes
                .clone()
                .acquire_many_owned(n as u32)
                .await
                .map_err(|_| StreamError::SessionClosed)?;
            // The stream may have ended while we waited.
            self.check_open(&berth_host::sync::lock(&shared.streams))?;
            shared
                .out
                .send(Outgoing {
                    frame: Frame::Data {
                        stream_id: self.id(),
                        flags: 0,
                        data: data[..n].to_vec(),
                    },
                    _permit: Some(permit),
                })
                .map_err(|_| StreamError::SessionClosed)?;
            data = &data[n..];
        }
        Ok(())
    }

    fn check_open(&self, streams: &Streams) -> Result<(), StreamError> {
        let id = self.id();
        let state = streams.map.get(&id).ok_or(StreamError::Closed(id))?;
        if state.reset {
            Err(StreamError::Reset(id))
        } else if state.local_closed {
            Err(StreamError::Closed(id))
        } else {
            Ok(())
        }
    }

    async fn grant(&self, wanted: u32) -> Result<u32, StreamError> {
        let shared = self.shared();
        loop {
            let notified = shared.credit.notified();
            {
                if shared.is_closed() {
                    return Err(StreamError::SessionClosed);
                }
                let mut streams = berth_host::sync::lock(&shared.streams);
                self.check_open(&streams)?;
                if !shared.enforce_send_windows.load(Ordering::Relaxed) {
                    return Ok(wanted);
                }
                let Streams {
                    map, session_send, ..
                } = &mut *streams;
                let state = map.get_mut(&self.id()).expect("checked open");
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

    /// Half-closes our side (an empty DATA frame with FIN); again, or on an
    /// ended stream, it does nothing.
    pub fn close(&self) -> Result<(), StreamError> {
        let shared = self.shared();
        if shared.is_closed() {
            return Err(StreamError::SessionClosed);
        }
        let id = self.id();
        let mut streams = berth_host::sync::lock(&shared.streams);
        match streams.map.get_mut(&id) {
            Some(state) if !state.local_closed && !state.reset => state.local_closed = true,
            _ => return Ok(()),
        }
        streams.retire(id);
        drop(streams);
        shared.send(Frame::Data {
            stream_id: id,
            flags: FLAG_FIN,
            data: Vec::new(),
        })
    }

    /// Resets the stream; again, or on an ended stream, it does nothing.
    pub fn reset(&self, status: u32) -> Result<(), StreamError> {
        let shared = self.shared();
        if shared.is_closed() {
            return Err(StreamError::SessionClosed);
        }
        let id = self.id();
        let mut streams = berth_host::sync::lock(&shared.streams);
        match streams.map.get_mut(&id) {
            Some(state) if !state.reset => {
                state.reset = true;
                state.local_closed = true;
                state.data = None;
            }
            _ => return Ok(()),
        }
        streams.retire(id);
        drop(streams);
        shared.credit.notify_waiters();
        shared.send(Frame::RstStream {
            stream_id: id,
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
            out_bytes: Arc::new(Semaphore::new(OUT_QUEUE_BYTES)),
            updates: Arc::new(Semaphore::new(MAX_QUEUED_UPDATES)),
            replies: Arc::new(Semaphore::new(MAX_QUEUED_REPLIES)),
            streams: Mutex::new(Streams {
                map: HashMap::new(),
                session_send: SendWindow::new(DEFAULT_WINDOW),
                session_recv: RecvWindow::new(DEFAULT_WINDOW),
                session_buffered: 0,
                session_header_bytes: 0,
                initial_send_window: DEFAULT_WINDOW,
                last_peer_stream: 0,
            }),
            credit: Notify::new(),
            room: Notify::new(),
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
        let last = berth_host::sync::lock(&self.shared.streams).last_peer_stream;
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
    mut frames: mpsc::UnboundedReceiver<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut codec = Codec::default();
    let mut buf = Vec::with_capacity(64 << 10);
    let mut batch = Vec::new();
    let mut closed = shared.closed.subscribe();
    // Once the session ended: what was queued before (GOAWAY, last data)
    // still goes out, but only until then.
    let mut deadline: Option<tokio::time::Instant> = None;
    let drain_from_now = || tokio::time::Instant::now() + DRAIN_TIMEOUT;
    loop {
        let next = match deadline {
            None => tokio::select! {
                f = frames.recv() => f,
                _ = wait_closed(&mut closed) => {
                    frames.close();
                    deadline = Some(drain_from_now());
                    continue;
                }
            },
            Some(at) => tokio::time::timeout_at(at, frames.recv())
                .await
                .ok()
                .flatten(),
        };
        let Some(next) = next else { break };
        buf.clear();
        codec.encode(&next.frame, &mut buf);
        batch.push(next);
        // Batch whatever else is already queued into one write.
        while buf.len() < BATCH_BYTES {
            match frames.try_recv() {
                Ok(f) => {
                    codec.encode(&f.frame, &mut buf);
                    batch.push(f);
                }
                Err(_) => break,
            }
        }
        let written = async {
            io.write_all(&buf).await?;
            io.flush().await
        };
        let ok = match deadline {
            None => {
                tokio::pin!(written);
                tokio::select! {
                    r = &mut written => r.is_ok(),
                    _ = wait_closed(&mut closed) => {
                        frames.close();
                        let at = drain_from_now();
                        deadline = Some(at);
                        matches!(tokio::time::timeout_at(at, written).await, Ok(Ok(())))
                    }
                }
            }
            Some(at) => matches!(tokio::time::timeout_at(at, written).await, Ok(Ok(()))),
        };
        // Written (or lost): the budget they held is free.
        batch.clear();
        if !ok {
            break;
        }
        shared.touch();
    }
    let _ = tokio::time::timeout_at(deadline.unwrap_or_else(drain_from_now), io.shutdown()).await;
    shared.close();
}

/// A DATA frame whose payload is still being taken.
struct InData {
    stream_id: u32,
    flags: u8,
    left: usize,
    /// Nothing of it was taken yet (replies go out once per frame).
    first: bool,
}

/// Why the read loop stopped.
enum End {
    /// EOF, a read error or the session closed.
    Done,
    /// The peer broke the protocol: GOAWAY with PROTOCOL_ERROR.
    Protocol,
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut io: R,
    accept: mpsc::Sender<Stream>,
    shared: Arc<Shared>,
) {
    let end = read_frames(&mut io, &accept, &shared).await;
    if let End::Protocol = end {
        let last = berth_host::sync::lock(&shared.streams).last_peer_stream;
        let _ = shared.send(Frame::GoAway {
            last_good_stream_id: last,
            status: 1,
        });
    }
    shared.close();
}

async fn read_frames<R: AsyncRead + Unpin>(
    io: &mut R,
    accept: &mpsc::Sender<Stream>,
    shared: &Arc<Shared>,
) -> End {
    let mut codec = Codec::default();
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUF);
    let mut closed = shared.closed.subscribe();
    let mut goaway = false;
    let mut data: Option<InData> = None;
    loop {
        let mut at = 0;
        loop {
            if let Some(d) = &mut data {
                let n = d.left.min(buf.len() - at);
                if n == 0 && d.left > 0 {
                    break;
                }
                let fin = n == d.left && d.flags & FLAG_FIN != 0;
                let taken = tokio::select! {
                    taken = deliver(shared, d, &buf[at..at + n], fin) => taken,
                    _ = wait_closed(&mut closed) => return End::Done,
                };
                let Some(taken) = taken else {
                    return End::Protocol;
                };
                at += taken;
                d.left -= taken;
                if d.left == 0 {
                    data = None;
                }
                continue;
            }
            let Some(head) = frame::head(&buf[at..]) else {
                break;
            };
            if let Some(stream_id) = head.data_stream {
                at += frame::HEADER_LEN;
                data = Some(InData {
                    stream_id,
                    flags: head.flags,
                    left: head.len,
                    first: true,
                });
                continue;
            }
            if head.len > MAX_CONTROL_PAYLOAD {
                tracing::debug!("SPDY control frame of {} bytes", head.len);
                return End::Protocol;
            }
            match codec.decode(&buf[at..]) {
                Ok(None) => break,
                Ok(Some((frame, used))) => {
                    at += used;
                    match handle(frame, shared, accept, &mut goaway) {
                        Ok(true) => {}
                        Ok(false) => return End::Done,
                        Err(Flood) => {
                            tracing::debug!("SPDY peer floods control frames: closing");
                            return End::Protocol;
                        }
                    }
                }
                Err(err) => {
                    tracing::debug!("SPDY protocol error: {err}");
                    return End::Protocol;
                }
            }
        }
        buf.drain(..at);
        let n = tokio::select! {
            r = io.read_buf(&mut buf) => r.unwrap_or(0),
            _ = wait_closed(&mut closed) => return End::Done,
        };
        if n == 0 {
            return End::Done;
        }
        shared.touch();
    }
}

/// Hands `bytes`, the next part of DATA frame `d`, to its stream's reader,
/// waiting while the stream or the session has no receive budget left.
/// Returns how many bytes it took (all when nobody reads the stream), or
/// `None` when the session must end.
async fn deliver(shared: &Shared, d: &mut InData, bytes: &[u8], fin: bool) -> Option<usize> {
    let enforce = shared.enforce_send_windows.load(Ordering::Relaxed);
    loop {
        let room = shared.room.notified();
        {
            let mut streams = berth_host::sync::lock(&shared.streams);
            let Streams {
                map,
                session_recv,
                session_buffered,
                ..
            } = &mut *streams;
            let first = d.first;
            let mut reply = None;
            let taken = match map.get_mut(&d.stream_id) {
                Some(state) if state.data.as_ref().is_some_and(|tx| !tx.is_closed()) => {
                    let budget = (STREAM_RECV_BYTES - state.buffered)
                        .min(SESSION_RECV_BYTES - *session_buffered);
                    let n = bytes.len().min(budget);
                    if n == 0 && !bytes.is_empty() {
                        None
                    } else {
                        // Peers without flow control may overrun our
                        // windows; see the module doc.
                        if session_recv.receive(n as u32).is_err() && enforce {
                            return None;
                        }
                        if state.recv.receive(n as u32).is_err() && enforce {
                            state.data = None;
                            state.reset = true;
                            state.local_closed = true;
                            reply = Some(rst::FLOW_CONTROL_ERROR);
                            // The rest of the frame is dropped.
                            Some(bytes.len())
                        } else {
                            if n > 0
                                && let Some(tx) = &state.data
                            {
                                let _ = tx.send(bytes[..n].to_vec());
                                state.buffered += n;
                                *session_buffered += n;
                            }
                            if fin && n == bytes.len() {
                                state.data = None;
                            }
                            Some(n)
                        }
                    }
                }
                Some(state) => {
                    let _ = session_recv.receive(bytes.len() as u32);
                    if state.data.is_none() && first {
                        reply = Some(rst::STREAM_ALREADY_CLOSED);
                    }
                    // Nobody reads it: dropped.
                    Some(bytes.len())
                }
                None => {
                    let _ = session_recv.receive(bytes.len() as u32);
                    if first {
                        reply = Some(rst::INVALID_STREAM);
                    }
                    Some(bytes.len())
                }
            };
            if let Some(taken) = taken {
                d.first = false;
                streams.retire(d.stream_id);
                drop(streams);
                if let Some(status) = reply {
                    shared.credit.notify_waiters();
                    shared
                        .reply(Frame::RstStream {
                            stream_id: d.stream_id,
                            status,
                        })
                        .ok()?;
                }
                return Some(taken);
            }
        }
        room.await;
    }
}

/// Applies one control frame; `Ok(false)` ends the session.
///
/// Long: one match over the SPDY control frame types, each arm the
/// protocol's rule for that frame and its bounds.
fn handle(
    frame: Frame,
    shared: &Arc<Shared>,
    accept: &mpsc::Sender<Stream>,
    goaway: &mut bool,
) -> Result<bool, Flood> {
    match frame {
        Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } => {
            let mut streams = berth_host::sync::lock(&shared.streams);
            // Peer (client) streams are odd and increasing.
            if stream_id % 2 == 0 || stream_id <= streams.last_peer_stream {
                drop(streams);
                shared.reply(Frame::RstStream {
                    stream_id,
                    status: rst::PROTOCOL_ERROR,
                })?;
                return Ok(true);
            }
            streams.last_peer_stream = stream_id;
            let header_bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
            if *goaway
                || streams.map.len() >= MAX_STREAMS
                || streams.session_header_bytes + header_bytes > SESSION_HEADER_BYTES
            {
                drop(streams);
                shared.reply(Frame::RstStream {
                    stream_id,
                    status: rst::REFUSED_STREAM,
                })?;
                return Ok(true);
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let initial = streams.initial_send_window;
            streams.map.insert(
                stream_id,
                StreamState {
                    send: SendWindow::new(initial),
                    recv: RecvWindow::new(DEFAULT_WINDOW),
                    data: (flags & FLAG_FIN == 0).then_some(tx),
                    buffered: 0,
                    reset: false,
                    local_closed: false,
                    orphaned: false,
                    header_bytes,
                },
            );
            streams.session_header_bytes += header_bytes;
            drop(streams);
            shared.reply(Frame::SynReply {
                stream_id,
                flags: 0,
                headers: Vec::new(),
            })?;
            let stream = Stream {
                id: stream_id,
                headers,
                data: rx,
                writer: StreamWriter {
                    handle: Arc::new(Handle {
                        id: stream_id,
                        shared: shared.clone(),
                    }),
                },
            };
            // A refused stream is dropped here, before the lock below.
            if accept.try_send(stream).is_err() {
                berth_host::sync::lock(&shared.streams).remove(stream_id);
                shared.reply(Frame::RstStream {
                    stream_id,
                    status: rst::REFUSED_STREAM,
                })?;
            }
        }
        Frame::Headers {
            stream_id, flags, ..
        } => {
            let mut streams = berth_host::sync::lock(&shared.streams);
            if flags & FLAG_FIN != 0
                && let Some(state) = streams.map.get_mut(&stream_id)
            {
                state.data = None;
                streams.retire(stream_id);
            }
        }
        Frame::RstStream { stream_id, .. } => {
            let mut streams = berth_host::sync::lock(&shared.streams);
            if let Some(state) = streams.map.get_mut(&stream_id) {
                state.data = None;
                state.reset = true;
                state.local_closed = true;
                streams.retire(stream_id);
            }
            drop(streams);
            shared.credit.notify_waiters();
        }
        Frame::Settings { entries, .. } => {
            for e in entries {
                if e.id == settings::INITIAL_WINDOW_SIZE && e.value as i64 <= 0x7fff_ffff {
                    shared.enforce_send_windows.store(true, Ordering::Relaxed);
                    let mut streams = berth_host::sync::lock(&shared.streams);
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
            let mut streams = berth_host::sync::lock(&shared.streams);
            if stream_id == 0 {
                if streams.session_send.credit(delta).is_err() {
                    return Ok(false);
                }
            } else if let Some(state) = streams.map.get_mut(&stream_id)
                && state.send.credit(delta).is_err()
            {
                state.reset = true;
                state.local_closed = true;
                state.data = None;
                streams.retire(stream_id);
                drop(streams);
                shared.reply(Frame::RstStream {
                    stream_id,
                    status: rst::FLOW_CONTROL_ERROR,
                })?;
            }
            shared.credit.notify_waiters();
        }
        Frame::Ping { id } => {
            // Only the peer's (odd) pings are answered; ours would be even.
            if id % 2 == 1 {
                shared.reply(Frame::Ping { id })?;
            }
        }
        Frame::GoAway { .. } => {
            // No new streams; the ones open run to their end.
            *goaway = true;
        }
        // DATA is taken apart by the read loop.
        Frame::Data { .. } | Frame::SynReply { .. } | Frame::Unknown { .. } => {}
    }
    Ok(true)
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
        start_with_pipe(1 << 20, idle)
    }

    /// `pipe` bytes fit in each direction before writes wait.
    fn start_with_pipe(pipe: usize, idle: Duration) -> (Peer, Session, mpsc::Receiver<Stream>) {
        let (a, b) = tokio::io::duplex(pipe);
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

    fn encode(frames: &[Frame]) -> Vec<u8> {
        let mut codec = Codec::default();
        let mut out = Vec::new();
        for f in frames {
            codec.encode(f, &mut out);
        }
        out
    }

    fn data(stream_id: u32, data: Vec<u8>) -> Frame {
        Frame::Data {
            stream_id,
            flags: 0,
            data,
        }
    }

    /// Lets every other task run until it waits.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    fn buffered(session: &Session, id: u32) -> (usize, usize) {
        let streams = berth_host::sync::lock(&session.shared.streams);
        (
            streams.map.get(&id).map_or(0, |s| s.buffered),
            streams.session_buffered,
        )
    }

    #[tokio::test]
    async fn a_stream_nobody_reads_holds_at_most_its_budget_and_the_peer_waits() {
        let (mut peer, session, mut incoming) = start(LONG);
        peer.syn(1, 0).await;
        let mut stream = incoming.recv().await.unwrap();
        peer.recv().await; // SYN_REPLY
        // 4 MiB in frames of 256 KiB, each larger than the budget; byte i
        // of the whole is i / 1000 (mod 256), to check order.
        const TOTAL: usize = 4 << 20;
        let whole: Vec<u8> = (0..TOTAL).map(|i| (i / 1000) as u8).collect();
        let frames: Vec<Frame> = whole
            .chunks(256 << 10)
            .map(|c| data(1, c.to_vec()))
            .collect();
        let (mut rd, mut wr) = tokio::io::split(peer.io);
        let writing = tokio::spawn(async move { wr.write_all(&encode(&frames)).await });
        // Window updates the session sends as we read below.
        tokio::spawn(async move { while rd.read(&mut [0u8; 4096]).await.unwrap_or(0) > 0 {} });
        settle().await;
        assert!(
            !writing.is_finished(),
            "the session took 4 MiB nobody reads"
        );
        assert_eq!(
            buffered(&session, 1),
            (STREAM_RECV_BYTES, STREAM_RECV_BYTES)
        );
        let mut got = Vec::new();
        while got.len() < TOTAL {
            let chunk = stream.read().await.unwrap();
            assert!(chunk.len() <= STREAM_RECV_BYTES, "{}", chunk.len());
            got.extend_from_slice(&chunk);
        }
        assert!(got == whole, "data out of order");
        writing.await.unwrap().unwrap();
        assert_eq!(buffered(&session, 1), (0, 0));
    }

    #[tokio::test]
    async fn streams_together_hold_at_most_the_session_budget() {
        let (mut peer, session, mut incoming) = start(LONG);
        let streams = SESSION_RECV_BYTES / STREAM_RECV_BYTES + 1;
        let mut held = Vec::new();
        for i in 0..streams as u32 {
            peer.syn(2 * i + 1, 0).await;
            held.push(incoming.recv().await.unwrap());
        }
        let (mut rd, mut wr) = tokio::io::split(peer.io);
        tokio::spawn(async move { while rd.read(&mut [0u8; 4096]).await.unwrap_or(0) > 0 {} });
        // The last stream gets more than the pipe holds: the writer must
        // wait for it.
        let frames: Vec<Frame> = (0..streams)
            .map(|i| {
                let len = if i + 1 == streams {
                    2 << 20
                } else {
                    STREAM_RECV_BYTES
                };
                data(2 * i as u32 + 1, vec![7; len])
            })
            .collect();
        let writing = tokio::spawn(async move { wr.write_all(&encode(&frames)).await });
        settle().await;
        let last = 2 * streams as u32 - 1;
        assert_eq!(buffered(&session, last), (0, SESSION_RECV_BYTES));
        assert!(!writing.is_finished());
        // Dropped readers give their budget back.
        let mut last_stream = held.pop().unwrap();
        drop(held);
        let mut got = 0;
        while got < 2 << 20 {
            got += last_stream.read().await.unwrap().len();
        }
        writing.await.unwrap().unwrap();
        assert_eq!(buffered(&session, last), (0, 0));
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_stops_our_writers() {
        let (mut peer, session, mut incoming) = start_with_pipe(64 << 10, LONG);
        peer.syn(1, 0).await;
        let stream = incoming.recv().await.unwrap();
        const TOTAL: usize = 8 << 20;
        let w = stream.writer();
        let writing = tokio::spawn(async move { w.write(&vec![9u8; TOTAL]).await });
        settle().await;
        assert!(
            !writing.is_finished(),
            "8 MiB queued for a peer that does not read"
        );
        assert!(session.shared.out_bytes.available_permits() < OUT_QUEUE_BYTES);
        let mut got = 0;
        while got < TOTAL {
            match peer.recv().await.unwrap() {
                Frame::Data { data, .. } => got += data.len(),
                Frame::SynReply { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, TOTAL);
        writing.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_control_reply_flood_from_a_peer_that_does_not_read_ends_the_session() {
        // Each PING, and each DATA frame on a stream that is not open, asks
        // for a reply.
        let floods = [
            (0..20_000u32)
                .map(|i| Frame::Ping { id: 2 * i + 1 })
                .collect::<Vec<_>>(),
            (0..20_000u32).map(|i| data(2 * i + 1, vec![1])).collect(),
        ];
        for flood in floods {
            let (peer, session, _incoming) = start_with_pipe(4 << 10, LONG);
            let (mut rd, mut wr) = tokio::io::split(peer.io);
            let bytes = encode(&flood);
            tokio::spawn(async move {
                let _ = wr.write_all(&bytes).await;
            });
            tokio::time::timeout(Duration::from_secs(5), session.closed())
                .await
                .expect("the session outlived the flood");
            let mut rest = Vec::new();
            rd.read_to_end(&mut rest).await.unwrap();
            let mut codec = Codec::default();
            let mut frames = Vec::new();
            let mut at = 0;
            while let Some((frame, used)) = codec.decode(&rest[at..]).unwrap() {
                frames.push(frame);
                at += used;
            }
            assert!(
                frames.len() < 2 * MAX_QUEUED_REPLIES,
                "{} replies",
                frames.len()
            );
            assert!(matches!(
                frames.last(),
                Some(Frame::GoAway { status: 1, .. })
            ));
        }
    }

    #[tokio::test]
    async fn ended_streams_are_forgotten() {
        let (mut peer, session, mut incoming) = start(LONG);
        for i in 0..(4 * MAX_STREAMS) as u32 {
            let id = 2 * i + 1;
            peer.syn(id, 0).await;
            let mut stream = incoming.recv().await.unwrap();
            assert!(matches!(peer.recv().await, Some(Frame::SynReply { .. })));
            match i % 4 {
                // Both sides half-close.
                0 => {
                    peer.send(Frame::Data {
                        stream_id: id,
                        flags: FLAG_FIN,
                        data: b"x".to_vec(),
                    })
                    .await;
                    assert_eq!(stream.read().await.unwrap(), b"x");
                    assert_eq!(stream.read().await, None);
                    stream.writer().close().unwrap();
                    assert!(peer.recv().await.unwrap().is_fin());
                }
                // The peer resets it.
                1 => {
                    peer.send(Frame::RstStream {
                        stream_id: id,
                        status: rst::CANCEL,
                    })
                    .await;
                    assert_eq!(stream.read().await, None);
                }
                // We reset it.
                2 => {
                    stream.writer().reset(rst::CANCEL).unwrap();
                    assert!(matches!(peer.recv().await, Some(Frame::RstStream { .. })));
                }
                // The peer half-closes; we drop it without a word.
                _ => {
                    peer.send(Frame::Data {
                        stream_id: id,
                        flags: FLAG_FIN,
                        data: Vec::new(),
                    })
                    .await;
                    assert_eq!(stream.read().await, None);
                }
            }
            drop(stream);
        }
        // A PING answered: the session has handled all of the above.
        peer.send(Frame::Ping { id: 1 }).await;
        assert_eq!(peer.recv().await, Some(Frame::Ping { id: 1 }));
        assert_eq!(berth_host::sync::lock(&session.shared.streams).map.len(), 0);
    }

    #[tokio::test]
    async fn open_streams_hold_at_most_the_session_header_budget() {
        let (mut peer, _session, mut incoming) = start(LONG);
        // Four streams of 240 KiB of headers fit in 1 MiB; a fifth does not.
        let big = |n: u32| {
            (0..4)
                .map(|i| (format!("x-{n}-{i}"), "v".repeat(60 << 10)))
                .collect::<Vec<_>>()
        };
        let mut held = Vec::new();
        for n in 0..5u32 {
            peer.send(Frame::SynStream {
                stream_id: 2 * n + 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers: big(n),
            })
            .await;
            if n < 4 {
                held.push(incoming.recv().await.unwrap());
                assert!(matches!(peer.recv().await, Some(Frame::SynReply { .. })));
            }
        }
        assert_eq!(
            peer.recv().await,
            Some(Frame::RstStream {
                stream_id: 9,
                status: rst::REFUSED_STREAM
            })
        );
        // One ends: its headers no longer count.
        held.pop().unwrap().writer().reset(rst::CANCEL).unwrap();
        assert!(matches!(peer.recv().await, Some(Frame::RstStream { .. })));
        peer.syn(11, 0).await;
        assert!(incoming.recv().await.is_some());
    }

    #[tokio::test]
    async fn open_streams_are_capped() {
        let (mut peer, _session, mut incoming) = start(LONG);
        let mut held = Vec::new();
        for i in 0..MAX_STREAMS as u32 {
            peer.syn(2 * i + 1, 0).await;
            held.push(incoming.recv().await.unwrap());
            assert!(matches!(peer.recv().await, Some(Frame::SynReply { .. })));
        }
        let over = 2 * MAX_STREAMS as u32 + 1;
        peer.syn(over, 0).await;
        assert_eq!(
            peer.recv().await,
            Some(Frame::RstStream {
                stream_id: over,
                status: rst::REFUSED_STREAM
            })
        );
        // One ends: there is room for the next.
        held.pop().unwrap().writer().reset(rst::CANCEL).unwrap();
        assert!(matches!(peer.recv().await, Some(Frame::RstStream { .. })));
        peer.syn(over + 2, 0).await;
        assert!(incoming.recv().await.is_some());
    }
}
