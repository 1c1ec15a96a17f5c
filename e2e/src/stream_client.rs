//! Clients of the streaming server, written apart from its code: a minimal
//! SPDY/3 client (HTTP upgrade, SYN_STREAM with zlib-compressed headers,
//! DATA, frame reading) and a WebSocket client on tokio-tungstenite.

use std::collections::HashMap;

use flate2::{Compress, Compression, FlushCompress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

pub struct SpdyClient {
    tcp: TcpStream,
    zlib: Compress,
    next_id: u32,
    /// Bytes read past the HTTP response.
    buf: Vec<u8>,
}

impl SpdyClient {
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
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(&spdy_dictionary()).unwrap();
        let client = SpdyClient {
            tcp,
            zlib,
            next_id: 1,
            buf: buf[head_end..].to_vec(),
        };
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

    /// SYN_STREAM with `headers`; returns the stream id.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&self.compress(headers));
        self.control(1, 0, &payload).await;
        id
    }

    async fn control(&mut self, kind: u16, flags: u8, payload: &[u8]) {
        let mut frame = vec![0x80, 3];
        frame.extend_from_slice(&kind.to_be_bytes());
        frame.push(flags);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(payload);
        self.tcp.write_all(&frame).await.unwrap();
    }

    /// A DATA frame; `fin` half-closes the stream.
    pub async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        let mut frame = id.to_be_bytes().to_vec();
        frame.push(fin as u8);
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(data);
        self.tcp.write_all(&frame).await.unwrap();
    }

    pub async fn ping(&mut self, id: u32) {
        self.control(6, 0, &id.to_be_bytes()).await;
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
            let mut chunk = [0u8; 16384];
            let n = self.tcp.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
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
