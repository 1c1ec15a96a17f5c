//! Clients of the streaming server, written apart from its code: a minimal
//! SPDY/3 client (HTTP upgrade, SYN_STREAM with zlib-compressed headers,
//! DATA, frame reading), also tunnelled in WebSocket binary messages as
//! client-go's port-forward sends it, a WebSocket client on
//! tokio-tungstenite, and client-go's `v5.channel.k8s.io` exec/attach
//! executor ([`ClientGoExec`]).

use std::collections::HashMap;
use std::time::Duration;

use flate2::{Compress, Compression, FlushCompress};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// client-go's subprotocol of port-forward over WebSocket (KEP-4006).
pub const SPDY_TUNNEL_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";

/// The SPDY/3 header dictionary, built the way the spec lays it out:
/// length-prefixed words, then a literal tail.
fn spdy_dictionary() -> Vec<u8> {
    let words = "options head post put delete trace accept accept-charset accept-encoding \
        accept-language accept-ranges age allow authorization cache-control connection \
        content-base content-encoding content-language content-length content-location \
        content-md5 content-range content-type date etag expect expires from host if-match \
        if-modified-since if-none-match if-range if-unmodified-since last-modified location \
        max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after \
        server te trailer transfer-encoding upgrade user-agent vary via warning \
        www-authenticate method get status 200_OK version HTTP/1.1 url public set-cookie \
        keep-alive origin";
    let mut dict = Vec::new();
    for w in words.split_whitespace() {
        let w = w.replace('_', " ");
        dict.extend_from_slice(&(w.len() as u32).to_be_bytes());
        dict.extend_from_slice(w.as_bytes());
    }
    let mut codes = String::new();
    for c in [
        100, 101, 201, 202, 205, 206, 300, 302, 303, 304, 305, 306, 307, 402, 405, 406, 407, 408,
        409, 410, 411, 412, 413, 414, 415, 416, 417, 502, 504, 505,
    ] {
        codes.push_str(&c.to_string());
    }
    dict.extend_from_slice(codes.as_bytes());
    for phrase in [
        "203 Non-Authoritative Information",
        "204 No Content",
        "301 Moved Permanently",
        "400 Bad Request",
        "401 Unauthorized",
        "403 Forbidden",
        "404 Not Found",
        "500 Internal Server Error",
        "501 Not Implemented",
        "503 Service Unavailable",
    ] {
        dict.extend_from_slice(phrase.as_bytes());
    }
    for m in "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec".split(' ') {
        dict.extend_from_slice(m.as_bytes());
        dict.push(b' ');
    }
    dict.extend_from_slice(b"00:00:00 ");
    for d in ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"] {
        dict.extend_from_slice(d.as_bytes());
        dict.extend_from_slice(b", ");
    }
    dict.extend_from_slice(b"GMT");
    for t in [
        "chunked",
        "text/html",
        "image/png",
        "image/jpg",
        "image/gif",
        "application/xml",
        "application/xhtml+xml",
        "text/plain",
        "text/javascript",
    ] {
        dict.extend_from_slice(t.as_bytes());
        dict.push(b',');
    }
    dict.extend_from_slice(
        b"publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    dict
}

/// A control frame's header as Go's framer writes it: version (with the
/// control bit), type, then flags and length.
fn control_head(kind: u16, flags: u8, len: usize) -> [Vec<u8>; 3] {
    [
        vec![0x80, 3],
        kind.to_be_bytes().to_vec(),
        ((flags as u32) << 24 | len as u32).to_be_bytes().to_vec(),
    ]
}

/// One frame as read: control frames keep their type; data frames have
/// `kind` 0.
#[derive(Debug)]
pub struct RawFrame {
    pub control: bool,
    pub kind: u16,
    pub stream_id: u32,
    pub flags: u8,
    pub payload: Vec<u8>,
}

/// What a SPDY client's bytes travel on.
enum Transport {
    Tcp(TcpStream),
    /// client-go's TunnelingConnection: each write of the framer is one
    /// binary message, and the messages read are one byte stream.
    Tunnel {
        ws: Box<WsStream>,
        /// The code of the server's close frame (1005: none in it).
        closed_with: Option<u16>,
    },
}

impl Transport {
    /// Writes `pieces`, the framer's writes for one frame.
    async fn write(&mut self, pieces: &[&[u8]]) {
        match self {
            Transport::Tcp(tcp) => tcp.write_all(&pieces.concat()).await.unwrap(),
            Transport::Tunnel { ws, .. } => {
                for piece in pieces {
                    ws.send(Message::binary(piece.to_vec())).await.unwrap();
                }
            }
        }
    }

    /// The next bytes; `None` at EOF (in a tunnel: once the server closed).
    async fn read(&mut self) -> Option<Vec<u8>> {
        match self {
            Transport::Tcp(tcp) => {
                let mut chunk = vec![0u8; 16384];
                let n = tcp.read(&mut chunk).await.ok()?;
                chunk.truncate(n);
                (n > 0).then_some(chunk)
            }
            Transport::Tunnel { ws, closed_with } => loop {
                match ws.next().await? {
                    Ok(Message::Binary(bytes)) if closed_with.is_none() && !bytes.is_empty() => {
                        return Some(bytes.to_vec());
                    }
                    Ok(Message::Text(text)) => panic!("text message in a SPDY tunnel: {text:?}"),
                    Ok(Message::Close(frame)) => {
                        // Read on: that sends our answer, and then the
                        // server ends the connection.
                        *closed_with = Some(frame.map_or(1005, |f| f.code.into()));
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
            },
        }
    }
}

pub struct SpdyClient {
    io: Transport,
    zlib: Compress,
    next_id: u32,
    /// Bytes read past the HTTP response.
    buf: Vec<u8>,
}

impl SpdyClient {
    fn new(io: Transport, buf: Vec<u8>) -> SpdyClient {
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(&spdy_dictionary()).unwrap();
        SpdyClient {
            io,
            zlib,
            next_id: 1,
            buf,
        }
    }

    /// client-go's port-forward dialer: a WebSocket offering
    /// [`SPDY_TUNNEL_PORT_FORWARD`] (and nothing else), then SPDY in it
    /// from the first byte (no HTTP response inside the tunnel).
    pub async fn tunnel(url: &str) -> SpdyClient {
        let ws = websocket(url, SPDY_TUNNEL_PORT_FORWARD).await;
        SpdyClient::new(
            Transport::Tunnel {
                ws: Box::new(ws),
                closed_with: None,
            },
            Vec::new(),
        )
    }

    /// Ends a tunnel as client-go's TunnelingConnection.Close does (a close
    /// frame with 1000); returns the code the server closed with.
    pub async fn close_tunnel(mut self) -> Option<u16> {
        let Transport::Tunnel { ws, .. } = &mut self.io else {
            panic!("not a tunnel");
        };
        let _ = ws.send(normal_close()).await;
        while self.io.read().await.is_some() {}
        self.tunnel_closed_with()
    }

    /// The code of the close frame the server ended the tunnel with, once
    /// it did.
    fn tunnel_closed_with(&self) -> Option<u16> {
        match &self.io {
            Transport::Tunnel { closed_with, .. } => *closed_with,
            Transport::Tcp(_) => None,
        }
    }

    /// Upgrades `url` (http://host:port/path) to SPDY/3.1 offering
    /// `protocol`; returns the client and the HTTP status line.
    pub async fn connect(url: &str, protocol: &str) -> (Option<SpdyClient>, String) {
        let rest = url.strip_prefix("http://").expect("http URL");
        let (host, path) = rest.split_at(rest.find('/').expect("path"));
        let mut tcp = TcpStream::connect(host).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
             X-Stream-Protocol-Version: {protocol}\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.unwrap();
            if n == 0 {
                break buf.len();
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status = head.lines().next().unwrap_or("").to_string();
        if !status.contains(" 101 ") {
            return (None, head);
        }
        let client = SpdyClient::new(Transport::Tcp(tcp), buf[head_end..].to_vec());
        (Some(client), head)
    }

    fn compress(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut plain = (headers.len() as u32).to_be_bytes().to_vec();
        for (k, v) in headers {
            plain.extend_from_slice(&(k.len() as u32).to_be_bytes());
            plain.extend_from_slice(k.as_bytes());
            plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
            plain.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 1024);
        self.zlib
            .compress_vec(&plain, &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.len() < out.capacity(), "compression buffer too small");
        out
    }

    /// SYN_STREAM with `headers`; returns the stream id. Written as Go's
    /// SPDY framer writes it: the frame header's fields, stream id,
    /// associated id, priority, slot and header block one write each.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let block = self.compress(headers);
        let head = control_head(1, 0, 10 + block.len());
        let id_bytes = id.to_be_bytes();
        let mut pieces: Vec<&[u8]> = head.iter().map(Vec::as_slice).collect();
        pieces.extend([&id_bytes[..], &[0, 0, 0, 0], &[0], &[0], &block]);
        self.io.write(&pieces).await;
        id
    }

    /// A DATA frame; `fin` half-closes the stream. Three writes: stream id,
    /// flags and length, data (an empty one too).
    pub async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        let flags_len = ((fin as u32) << 24 | data.len() as u32).to_be_bytes();
        self.io.write(&[&id.to_be_bytes(), &flags_len, data]).await;
    }

    pub async fn ping(&mut self, id: u32) {
        let head = control_head(6, 0, 4);
        let id_bytes = id.to_be_bytes();
        let mut pieces: Vec<&[u8]> = head.iter().map(Vec::as_slice).collect();
        pieces.push(&id_bytes);
        self.io.write(&pieces).await;
    }

    /// The next frame; `None` at EOF.
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if self.buf.len() >= 8 {
                let len = u32::from_be_bytes([0, self.buf[5], self.buf[6], self.buf[7]]) as usize;
                if self.buf.len() >= 8 + len {
                    let b: Vec<u8> = self.buf.drain(..8 + len).collect();
                    let control = b[0] & 0x80 != 0;
                    let word = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    let payload = b[8..].to_vec();
                    let (kind, stream_id) = if control {
                        let kind = (word & 0xffff) as u16;
                        let sid = if payload.len() >= 4 && matches!(kind, 1 | 2 | 3 | 8 | 9) {
                            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                                & 0x7fff_ffff
                        } else {
                            0
                        };
                        (kind, sid)
                    } else {
                        (0, word & 0x7fff_ffff)
                    };
                    return Some(RawFrame {
                        control,
                        kind,
                        stream_id,
                        flags: b[4],
                        payload,
                    });
                }
            }
            let bytes = self.io.read().await?;
            self.buf.extend_from_slice(&bytes);
        }
    }

    /// Reads until every stream in `until` got FIN (or EOF); returns the
    /// data per stream.
    pub async fn collect(&mut self, until: &[u32]) -> HashMap<u32, Vec<u8>> {
        let mut data: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut open: Vec<u32> = until.to_vec();
        while !open.is_empty() {
            let Some(f) = self.read_frame().await else {
                break;
            };
            if f.control {
                if f.kind == 3 {
                    open.retain(|id| *id != f.stream_id);
                }
                continue;
            }
            data.entry(f.stream_id)
                .or_default()
                .extend_from_slice(&f.payload);
            if f.flags & 1 != 0 {
                open.retain(|id| *id != f.stream_id);
            }
        }
        data
    }

    /// Reads until stream `id`'s data contains `needle`; returns its data.
    pub async fn read_until(&mut self, id: u32, needle: &str) -> String {
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let f = self.read_frame().await.unwrap_or_else(|| {
                panic!(
                    "EOF before {needle:?}; got {:?}",
                    String::from_utf8_lossy(&seen)
                )
            });
            if !f.control && f.stream_id == id {
                seen.extend_from_slice(&f.payload);
            }
        }
        String::from_utf8_lossy(&seen).to_string()
    }
}

/// A plain HTTP GET; returns the status code.
pub async fn http_status(url: &str) -> u16 {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').expect("path"));
    let mut tcp = TcpStream::connect(host).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A WebSocket connection offering `protocol`.
pub async fn websocket(
    url: &str,
    protocol: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url
        .replacen("http://", "ws://", 1)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(protocol)
    );
    ws
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// The streams client-go's executor opens: error always, stdin, stdout,
/// stderr (not with a tty) and resize (with one), as its options ask.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecStreams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecStreams {
    /// Whether client-go created the stream of `channel`.
    fn opened(&self, channel: u8) -> bool {
        match channel {
            0 => self.stdin,
            1 => self.stdout,
            2 => self.stderr && !self.tty,
            3 => true,
            4 => self.tty,
            _ => false,
        }
    }
}

/// How a WebSocket session ended, as client-go's reader saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEnd {
    /// A close frame with this code (1005: none in it).
    Close(u16),
    /// No close frame: the connection ended or broke, or the server sent
    /// what client-go takes as an error (a text message, an empty one).
    Broken(String),
}

/// What client-go's read loop demultiplexed.
#[derive(Debug, Clone, Default)]
pub struct Demuxed {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error stream (channel 3): the exit `Status`.
    pub error: Vec<u8>,
    /// Messages on channels the client did not open (client-go drops them).
    pub strays: usize,
    /// Pongs to the client's heartbeat pings.
    pub pongs: usize,
    pub end: Option<WsEnd>,
    /// The server ended the connection (after a close frame: once the
    /// client answered it, completing the close handshake).
    pub disconnected: bool,
}

/// What client-go's `StreamWithContext` returns when it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecError {
    /// `CodeExitError`: a `NonZeroExitCode` Status with its `ExitCode` cause.
    ExitCode(u8),
    /// A `Failure` Status of another reason: its message.
    Failure(String),
    /// "error stream protocol error: ..."
    Protocol(String),
    /// "error reading from error stream: ...": the streams ended in an
    /// error instead of EOF (as with a close frame other than 1000).
    Stream(String),
}

/// client-go's `NewWebSocketExecutor` (tools/remotecommand/websocket.go),
/// `v5.channel.k8s.io` only: every message binary, its first byte the
/// stream; stdin writes as they come, its close as `[255, 0]`, resize
/// events as JSON lines; a close frame with 1000 is EOF on every stream,
/// anything else an error; the exit status decoded from the error stream
/// as its v4 decoder does.
pub struct ClientGoExec {
    sink: SplitSink<WsStream, Message>,
    state: watch::Receiver<Demuxed>,
    reader: tokio::task::JoinHandle<()>,
}

/// How long a session may take in these tests before it counts as hung.
const SESSION_LIMIT: Duration = Duration::from_secs(60);

impl ClientGoExec {
    pub async fn connect(url: &str, streams: ExecStreams) -> ClientGoExec {
        let ws = websocket(url, "v5.channel.k8s.io").await;
        let (mut sink, source) = ws.split();
        // The heartbeat: client-go pings every 5 s and fails the session
        // when no pong comes within a minute.
        sink.send(Message::Ping("heartbeat".into())).await.unwrap();
        let (tx, state) = watch::channel(Demuxed::default());
        let reader = tokio::spawn(read_demux(source, streams, tx));
        ClientGoExec {
            sink,
            state,
            reader,
        }
    }

    /// One write of stdin: one message.
    pub async fn stdin(&mut self, data: &[u8]) {
        let mut message = vec![0u8];
        message.extend_from_slice(data);
        self.sink.send(Message::binary(message)).await.unwrap();
    }

    /// Stdin's EOF: v5's close signal for stream 0.
    pub async fn close_stdin(&mut self) {
        self.sink.send(Message::binary(vec![255, 0])).await.unwrap();
    }

    /// A terminal size, as client-go's JSON encoder writes it (one line).
    pub async fn resize(&mut self, width: u16, height: u16) {
        let mut message = vec![4u8];
        message
            .extend_from_slice(format!("{{\"Width\":{width},\"Height\":{height}}}\n").as_bytes());
        self.sink.send(Message::binary(message)).await.unwrap();
    }

    /// Waits for the pong to the heartbeat's ping.
    pub async fn wait_pong(&self) {
        let mut state = self.state.clone();
        let ponged = tokio::time::timeout(
            SESSION_LIMIT,
            state.wait_for(|d| d.pongs > 0 || d.end.is_some()),
        )
        .await
        .expect("no pong")
        .unwrap()
        .pongs
            > 0;
        assert!(ponged, "ended without a pong: {:?}", self.state.borrow());
    }

    /// Waits until stdout contains `needle`; returns stdout.
    pub async fn stdout_until(&self, needle: &str) -> String {
        let mut state = self.state.clone();
        let seen = tokio::time::timeout(
            SESSION_LIMIT,
            state.wait_for(|d| {
                String::from_utf8_lossy(&d.stdout).contains(needle) || d.end.is_some()
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} on stdout: {:?}", self.state.borrow()))
        .unwrap()
        .clone();
        let stdout = String::from_utf8_lossy(&seen.stdout).into_owned();
        assert!(stdout.contains(needle), "ended before {needle:?}: {seen:?}");
        stdout
    }

    /// Waits for the session's end; returns what was read and what
    /// `StreamWithContext` would return.
    pub async fn finish(self) -> (Demuxed, Result<(), ExecError>) {
        let ClientGoExec {
            sink,
            state,
            reader,
        } = self;
        tokio::time::timeout(SESSION_LIMIT, reader)
            .await
            .unwrap_or_else(|_| panic!("session did not end: {:?}", state.borrow()))
            .unwrap();
        drop(sink);
        let demuxed = state.borrow().clone();
        let result = match &demuxed.end {
            Some(WsEnd::Close(1000)) => decode_status(&demuxed.error),
            Some(WsEnd::Close(code)) => Err(ExecError::Stream(format!(
                "error reading from error stream: next reader: websocket: close {code}"
            ))),
            Some(WsEnd::Broken(why)) => Err(ExecError::Stream(format!(
                "error reading from error stream: {why}"
            ))),
            None => unreachable!("the reader sets the end"),
        };
        (demuxed, result)
    }
}

async fn read_demux(
    mut source: SplitStream<WsStream>,
    streams: ExecStreams,
    state: watch::Sender<Demuxed>,
) {
    while let Some(item) = source.next().await {
        let mut done = false;
        state.send_modify(|d| match item {
            _ if d.end.is_some() => {}
            Ok(Message::Binary(bytes)) => {
                let Some((&channel, data)) = bytes.split_first() else {
                    d.end = Some(WsEnd::Broken("read stream id: EOF".into()));
                    done = true;
                    return;
                };
                if !streams.opened(channel) {
                    d.strays += 1;
                    return;
                }
                match channel {
                    1 => d.stdout.extend_from_slice(data),
                    2 => d.stderr.extend_from_slice(data),
                    3 => d.error.extend_from_slice(data),
                    // Data for stdin and resize is read and dropped.
                    _ => {}
                }
            }
            Ok(Message::Text(_)) => {
                d.end = Some(WsEnd::Broken("unexpected message type: 1".into()));
                done = true;
            }
            Ok(Message::Close(frame)) => {
                d.end = Some(WsEnd::Close(frame.map_or(1005, |f| f.code.into())));
            }
            Ok(Message::Pong(_)) => d.pongs += 1,
            Ok(_) => {}
            Err(err) => {
                d.end = Some(WsEnd::Broken(format!("next reader: {err}")));
                done = true;
            }
        });
        if done {
            return;
        }
    }
    // After a close frame, reading on answered it; the server then ended
    // the connection.
    state.send_modify(|d| {
        d.disconnected = true;
        if d.end.is_none() {
            d.end = Some(WsEnd::Broken(
                "next reader: EOF without a close frame".into(),
            ));
        }
    });
}

/// client-go's `errorDecoderV4`: the error stream's `metav1.Status`.
fn decode_status(error: &[u8]) -> Result<(), ExecError> {
    if error.is_empty() {
        return Ok(());
    }
    let protocol =
        |what: String| ExecError::Protocol(format!("error stream protocol error: {what}"));
    let status: serde_json::Value = serde_json::from_slice(error)
        .map_err(|err| protocol(format!("{err} in {:?}", String::from_utf8_lossy(error))))?;
    match status["status"].as_str() {
        Some("Success") => Ok(()),
        Some("Failure") if status["reason"] == "NonZeroExitCode" => {
            let causes = status["details"]["causes"]
                .as_array()
                .ok_or_else(|| protocol("details must be set".into()))?;
            let cause = causes
                .iter()
                .find(|c| c["reason"] == "ExitCode")
                .ok_or_else(|| protocol("no ExitCode cause given".into()))?;
            let message = cause["message"].as_str().unwrap_or_default();
            message
                .parse::<u8>()
                .map(|code| Err(ExecError::ExitCode(code)))
                .map_err(|_| protocol(format!("invalid exit code value {message:?}")))?
        }
        Some("Failure") => Err(ExecError::Failure(
            status["message"].as_str().unwrap_or_default().to_string(),
        )),
        _ => Err(protocol("unknown error".into())),
    }
}
