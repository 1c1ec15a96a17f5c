//! Every gRPC client's `:authority` on the CRI socket (issue 17).
//!
//! On a unix socket target grpc C-core (Python's and Ruby's grpcio, C++;
//! since 1.57) sends the socket path percent-encoded as `:authority`
//! (`run%2Fberth%2Fberth.sock`), grpc-java and older cores send the raw path,
//! Go clients send `localhost`. hyper's h2 parses `:authority` as an
//! RFC 3986 authority the strict way of `http::uri::Authority` and resets
//! the stream with PROTOCOL_ERROR when that fails; CRI-O and containerd
//! (grpc-go) serve such requests. On a unix socket the authority names
//! nothing, so [`AuthorityFilter`] sits between the socket and h2 and
//! replaces one h2 would refuse with `localhost`, what a Go client sends.
//!
//! It follows the client's HTTP/2 frames as they pass, up to the end of
//! the first header block (HEADERS and its CONTINUATIONs), which it
//! HPACK-decodes. A client sends one authority on all its calls, so that
//! block decides for the connection ([`Mode`]): if its `:authority` is
//! valid, it and everything after reach h2 byte for byte, unread. If not,
//! every header block of the connection is decoded, by a decoder that
//! mirrors the client's dynamic table, and re-encoded as literals without
//! indexing, so h2's dynamic table never changes and can never disagree
//! with what the client meant. Every other frame passes unchanged, read
//! straight into h2's buffer. Each buffer is bounded by h2's own limits
//! for berthd's settings: past them the connection ends, as h2 would end
//! it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use loona_hpack::decoder::DecoderError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest frame berthd's HTTP/2 server accepts (its
/// SETTINGS_MAX_FRAME_SIZE, hyper's default, set explicitly in `main`).
pub const MAX_FRAME_SIZE: u32 = 16 * 1024;

/// berthd's SETTINGS_MAX_HEADER_LIST_SIZE (hyper's default, set explicitly
/// in `main`). h2 refuses a larger request and ends the connection past 4
/// times this much (its abuse limit); so does the filter.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

const MAX_DECODED_BLOCK: usize = 4 * MAX_HEADER_LIST_SIZE as usize;

/// h2 takes 5 CONTINUATION frames without END_HEADERS at berthd's sizes
/// (its CONTINUATION flood limit), so a block is at most HEADERS, 5 of
/// those and a last one.
const MAX_BLOCK_FRAMES: usize = 7;

/// SETTINGS_HEADER_TABLE_SIZE: berthd never changes it from the
/// protocol's default, so no client table may be larger.
const HEADER_TABLE_SIZE: usize = 4096;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD: usize = 9;
/// The largest unit the filter must hold whole: a header frame.
const MAX_UNIT: usize = FRAME_HEAD + MAX_FRAME_SIZE as usize;

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// What a Go client sends, and what an authority h2 refuses becomes.
const REPLACEMENT: &[u8] = b"localhost";

/// Why the filter ended a connection: the client broke HTTP/2 in a way h2
/// also ends the connection for, or went past one of h2's limits.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("the client did not open with the HTTP/2 connection preface")]
    Preface,
    #[error("a header frame of {len} bytes on stream {stream} (the limit is {MAX_FRAME_SIZE})")]
    FrameSize { stream: u32, len: usize },
    #[error("a PUSH_PROMISE frame from a client")]
    PushPromise,
    #[error("a CONTINUATION frame on stream {stream} with no header block open")]
    UnexpectedContinuation { stream: u32 },
    #[error("frame type {kind:#x} on stream {stream} inside the header block of stream {open}")]
    Interleaved { kind: u8, stream: u32, open: u32 },
    #[error("a HEADERS frame on stream {stream} whose padding or priority overruns it")]
    Padding { stream: u32 },
    #[error("the header block of stream {stream} spans more than {MAX_BLOCK_FRAMES} frames")]
    TooManyFrames { stream: u32 },
    #[error("the header block of stream {stream} decodes to more than {MAX_DECODED_BLOCK} bytes")]
    TooLarge { stream: u32 },
    #[error("the header block of stream {stream} is not valid HPACK: {source}")]
    Hpack { stream: u32, source: DecoderError },
}

/// A CRI connection as h2 should see it: see the module's doc.
pub struct AuthorityFilter<S> {
    inner: S,
    rewriter: Rewriter,
    /// Read from the client and not yet stepped through.
    held: BytesMut,
    /// Header frames for h2, from `sent` on.
    out: Vec<u8>,
    sent: usize,
    /// The client closed its side.
    eof: bool,
    /// A [`FilterError`] ended the connection.
    failed: bool,
}

impl<S> AuthorityFilter<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFilter {
            inner,
            rewriter: Rewriter::new(),
            held: BytesMut::new(),
            out: Vec::new(),
            sent: 0,
            eof: false,
            failed: false,
        }
    }

    fn fail(&mut self, err: FilterError) -> io::Error {
        tracing::debug!("closing a CRI connection: {err}");
        self.failed = true;
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

impl<S: AsyncRead + Unpin> AuthorityFilter<S> {
    /// Hands h2 the next bytes: rewritten header frames first, then what an
    /// earlier read left over, else a fresh read straight into h2's buffer,
    /// of which everything from the first header frame on waits in `held`.
    fn poll_filtered(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Decided and drained: as if there were no filter.
        if self.rewriter.mode == Mode::Transparent && self.out.is_empty() && self.held.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        loop {
            if self.sent < self.out.len() {
                let n = (self.out.len() - self.sent).min(buf.remaining());
                buf.put_slice(&self.out[self.sent..self.sent + n]);
                self.sent += n;
                if self.sent == self.out.len() {
                    self.out.clear();
                    self.sent = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if !self.held.is_empty() {
                let step = self.rewriter.step(&self.held);
                match step.map_err(|err| self.fail(err))? {
                    Step::Pass(n) => {
                        let n = n.min(buf.remaining());
                        buf.put_slice(&self.held[..n]);
                        self.held.advance(n);
                        self.rewriter.passed(n);
                        return Poll::Ready(Ok(()));
                    }
                    Step::Block(len) => {
                        let frame = self.held.split_to(len);
                        if let Err(err) = self.rewriter.take(&frame, &mut self.out) {
                            return Poll::Ready(Err(self.fail(err)));
                        }
                        continue;
                    }
                    Step::NeedMore if self.eof => return Poll::Ready(Ok(())),
                    Step::NeedMore => {
                        // The unit is incomplete, so shorter than MAX_UNIT.
                        let room = MAX_UNIT - self.held.len();
                        self.held.reserve(room);
                        let mut limited = (&mut self.held).limit(room);
                        let read = ready!(tokio_util::io::poll_read_buf(
                            Pin::new(&mut self.inner),
                            cx,
                            &mut limited
                        ))?;
                        self.eof = read == 0;
                        continue;
                    }
                }
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            let start = buf.filled().len();
            ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
            let read = &buf.filled()[start..];
            if read.is_empty() {
                self.eof = true;
                return Poll::Ready(Ok(()));
            }
            let mut passed = 0;
            while passed < read.len() {
                match self.rewriter.step(&read[passed..]) {
                    Ok(Step::Pass(n)) => {
                        self.rewriter.passed(n);
                        passed += n;
                    }
                    Ok(Step::Block(_) | Step::NeedMore) => break,
                    Err(err) => return Poll::Ready(Err(self.fail(err))),
                }
            }
            if passed < read.len() {
                self.held.extend_from_slice(&read[passed..]);
                buf.set_filled(start + passed);
            }
            if passed > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFilter<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the connection ended on an HTTP/2 protocol error",
            )));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        this.poll_filtered(cx, buf)
    }
}

/// berthd's replies pass unchanged.
impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFilter<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// RPCs still see the socket's peer, as without the filter.
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFilter<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// What the bytes at the front of the client's stream are.
#[derive(Debug, PartialEq)]
enum Step {
    /// So many pass unchanged; [`Rewriter::passed`] is told how many did.
    Pass(usize),
    /// A whole header frame of this length, for [`Rewriter::take`].
    Block(usize),
    /// The next frame head or header frame is not all there yet.
    NeedMore,
}

/// The filter without its I/O: where the client's frames start and end,
/// and what its header blocks become.
struct Rewriter {
    /// How much of the preface has passed.
    preface: usize,
    /// What is left of a frame (head and payload) that passes unchanged.
    passing: usize,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    mode: Mode,
}

/// What becomes of the client's header blocks. The connection's first
/// block decides: clients send one authority for all their calls.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Until the first block is complete.
    Deciding,
    /// Its `:authority` was valid (or absent): from then on every byte
    /// passes unread, as with no filter. Go clients (the kubelet) are here:
    /// their strings are Huffman-coded, and decoding them on every call
    /// would cost more than the call (loona-hpack builds its Huffman table
    /// for each string).
    Transparent,
    /// It was refused: every block is decoded and re-encoded, so h2's
    /// HPACK table never changes and never disagrees with the client's.
    Rewriting,
}

/// A header block being collected, until END_HEADERS.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    frames: usize,
    /// The HPACK bytes, without padding and priority.
    fragment: Vec<u8>,
    /// The frames as they came, for h2 while nothing is rewritten.
    raw: Vec<u8>,
}

struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(head: &[u8]) -> FrameHead {
        FrameHead {
            len: usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]),
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        }
    }
}

impl Rewriter {
    fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Rewriter {
            preface: 0,
            passing: 0,
            block: None,
            decoder,
            mode: Mode::Deciding,
        }
    }

    /// Classifies the front of `input` (never empty).
    fn step(&mut self, input: &[u8]) -> Result<Step, FilterError> {
        if self.preface < PREFACE.len() {
            let n = input.len().min(PREFACE.len() - self.preface);
            if input[..n] != PREFACE[self.preface..self.preface + n] {
                return Err(FilterError::Preface);
            }
            return Ok(Step::Pass(n));
        }
        if self.mode == Mode::Transparent {
            return Ok(Step::Pass(input.len()));
        }
        if self.passing > 0 {
            return Ok(Step::Pass(self.passing.min(input.len())));
        }
        let Some(head) = input.get(..FRAME_HEAD) else {
            return Ok(Step::NeedMore);
        };
        let head = FrameHead::parse(head);
        match head.kind {
            HEADERS | CONTINUATION => {
                if head.len > MAX_FRAME_SIZE as usize {
                    return Err(FilterError::FrameSize {
                        stream: head.stream,
                        len: head.len,
                    });
                }
                let len = FRAME_HEAD + head.len;
                Ok(if input.len() < len {
                    Step::NeedMore
                } else {
                    Step::Block(len)
                })
            }
            // Only a server may push; h2 ends the connection too.
            PUSH_PROMISE => Err(FilterError::PushPromise),
            kind => {
                // RFC 9113 §6.10: nothing may come between a block's frames.
                if let Some(block) = &self.block {
                    return Err(FilterError::Interleaved {
                        kind,
                        stream: head.stream,
                        open: block.stream,
                    });
                }
                self.passing = FRAME_HEAD + head.len;
                Ok(Step::Pass(self.passing.min(input.len())))
            }
        }
    }

    /// `n` bytes of a [`Step::Pass`] went to h2.
    fn passed(&mut self, n: usize) {
        if self.preface < PREFACE.len() {
            self.preface += n;
        } else if self.mode != Mode::Transparent {
            self.passing -= n;
        }
    }

    /// Takes in a whole HEADERS or CONTINUATION frame; at END_HEADERS
    /// appends what the block becomes to `out`.
    fn take(&mut self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), FilterError> {
        let head = FrameHead::parse(&frame[..FRAME_HEAD]);
        let payload = &frame[FRAME_HEAD..];
        let (mut block, fragment) = match (head.kind, self.block.take()) {
            (HEADERS, None) => {
                let (priority, fragment) = headers_payload(&head, payload)?;
                let block = Block {
                    stream: head.stream,
                    end_stream: head.flags & END_STREAM != 0,
                    priority,
                    frames: 0,
                    fragment: Vec::new(),
                    raw: Vec::new(),
                };
                (block, fragment)
            }
            // `step` hands over only HEADERS and CONTINUATION frames.
            (_, None) => {
                return Err(FilterError::UnexpectedContinuation {
                    stream: head.stream,
                });
            }
            (CONTINUATION, Some(open)) if open.stream == head.stream => (open, payload),
            // A second HEADERS, or a CONTINUATION of another stream.
            (kind, Some(open)) => {
                return Err(FilterError::Interleaved {
                    kind,
                    stream: head.stream,
                    open: open.stream,
                });
            }
        };
        block.frames += 1;
        if block.frames > MAX_BLOCK_FRAMES {
            return Err(FilterError::TooManyFrames {
                stream: block.stream,
            });
        }
        block.fragment.extend_from_slice(fragment);
        block.raw.extend_from_slice(frame);
        if head.flags & END_HEADERS == 0 {
            self.block = Some(block);
            return Ok(());
        }
        self.finish(&block, out)
    }

    /// Decodes a whole block (so the client's table stays mirrored) and
    /// hands it to h2 as it came, or re-encoded when rewriting.
    fn finish(&mut self, block: &Block, out: &mut Vec<u8>) -> Result<(), FilterError> {
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        let mut size = 0;
        let mut refused: Option<String> = None;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                // h2's measure: RFC 9113 §6.5.2.
                size += name.len() + value.len() + 32;
                if size > MAX_DECODED_BLOCK {
                    return;
                }
                let mut value = &value[..];
                if &name[..] == b":authority" && http::uri::Authority::try_from(value).is_err() {
                    if refused.is_none() {
                        let shown = &value[..value.len().min(256)];
                        refused = Some(String::from_utf8_lossy(shown).into_owned());
                    }
                    value = REPLACEMENT;
                }
                encode_literal(&mut encoded, &name, value);
            })
            .map_err(|source| FilterError::Hpack {
                stream: block.stream,
                source,
            })?;
        if size > MAX_DECODED_BLOCK {
            return Err(FilterError::TooLarge {
                stream: block.stream,
            });
        }
        if self.mode == Mode::Deciding {
            self.mode = match refused {
                None => Mode::Transparent,
                Some(authority) => {
                    tracing::debug!(
                        stream = block.stream,
                        "client sent :authority {authority:?}, which h2 refuses; \
                         it reads localhost and the connection's header blocks are re-encoded"
                    );
                    Mode::Rewriting
                }
            };
        }
        if self.mode == Mode::Rewriting {
            write_block(out, block, &encoded);
        } else {
            out.extend_from_slice(&block.raw);
        }
        Ok(())
    }
}

/// Splits a HEADERS payload into its priority fields and its HPACK bytes.
fn headers_payload<'a>(
    head: &FrameHead,
    payload: &'a [u8],
) -> Result<(Option<[u8; 5]>, &'a [u8]), FilterError> {
    let overrun = || FilterError::Padding {
        stream: head.stream,
    };
    let (mut start, mut end) = (0, payload.len());
    if head.flags & PADDED != 0 {
        let pad = usize::from(*payload.first().ok_or_else(overrun)?);
        start = 1;
        end = end.checked_sub(pad).ok_or_else(overrun)?;
    }
    let mut priority = None;
    if head.flags & PRIORITY != 0 {
        let fields = payload.get(start..start + 5).ok_or_else(overrun)?;
        priority = Some([fields[0], fields[1], fields[2], fields[3], fields[4]]);
        start += 5;
    }
    if start > end {
        return Err(overrun());
    }
    Ok((priority, &payload[start..end]))
}

/// A literal header field without indexing, new name, no Huffman
/// (RFC 7541 §6.2.2): it leaves h2's dynamic table as it is.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for string in [name, value] {
        encode_length(out, string.len());
        out.extend_from_slice(string);
    }
}

/// A string length: an HPACK integer with a 7-bit prefix (RFC 7541 §5.1).
fn encode_length(out: &mut Vec<u8>, mut len: usize) {
    const PREFIX_MAX: usize = 0x7f;
    if len < PREFIX_MAX {
        out.push(len as u8);
        return;
    }
    out.push(PREFIX_MAX as u8);
    len -= PREFIX_MAX;
    while len >= 0x80 {
        out.push((len & 0x7f) as u8 | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
}

/// The re-encoded block as HEADERS and CONTINUATION frames of at most
/// [`MAX_FRAME_SIZE`], with the original's stream, END_STREAM and
/// priority; the padding is dropped.
fn write_block(out: &mut Vec<u8>, block: &Block, encoded: &[u8]) {
    let max = MAX_FRAME_SIZE as usize;
    let (mut flags, room) = match block.priority {
        Some(_) => (PRIORITY, max - 5),
        None => (0, max),
    };
    if block.end_stream {
        flags |= END_STREAM;
    }
    let (first, mut rest) = encoded.split_at(encoded.len().min(room));
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
    write_head(
        out,
        priority.len() + first.len(),
        HEADERS,
        flags,
        block.stream,
    );
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(max));
        let flags = if tail.is_empty() { END_HEADERS } else { 0 };
        write_head(out, chunk.len(), CONTINUATION, flags, block.stream);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

fn write_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::io::AsyncReadExt;

    use super::*;

    const DATA: u8 = 0x0;
    const SETTINGS: u8 = 0x4;
    const WINDOW_UPDATE: u8 = 0x8;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_head(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    /// The preface and the SETTINGS and WINDOW_UPDATE grpcio opens with.
    fn opening() -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(
            SETTINGS,
            0,
            0,
            &[0, 2, 0, 0, 0, 0, 0, 5, 0, 0, 0x40, 0],
        ));
        out.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0x3f, 0, 1]));
        out
    }

    /// A literal with incremental indexing and a new name, as grpcio sends
    /// a field the first time.
    fn indexing(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0x40];
        for string in [name, value] {
            encode_length(&mut out, string.len());
            out.extend_from_slice(string.as_bytes());
        }
        out
    }

    /// An indexed field: 2 is `:method GET`, 3 `:method POST`, 6
    /// `:scheme http`; 62 on is the dynamic table, newest first.
    fn indexed(index: u8) -> Vec<u8> {
        assert!(index < 0x7f);
        vec![0x80 | index]
    }

    fn grpc_request(authority: &str) -> Vec<u8> {
        [
            indexing(":path", "/runtime.v1.RuntimeService/Version"),
            indexing(":authority", authority),
            indexed(3),
            indexed(6),
            indexing("content-type", "application/grpc"),
            indexing("te", "trailers"),
        ]
        .concat()
    }

    /// What h2 decodes from the fields `grpc_request` encodes.
    fn grpc_fields(authority: &str) -> Vec<(String, String)> {
        fields(&[
            (":path", "/runtime.v1.RuntimeService/Version"),
            (":authority", authority),
            (":method", "POST"),
            (":scheme", "http"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ])
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// A reader that returns `chunk`-byte pieces of `input`, and Pending
    /// (woken at once) between them, as a socket may.
    struct Chunked {
        input: VecDeque<u8>,
        chunk: usize,
        pending: bool,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.pending = !self.pending;
            if self.pending {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = self.chunk.min(buf.remaining()).min(self.input.len());
            let piece: Vec<u8> = self.input.drain(..n).collect();
            buf.put_slice(&piece);
            Poll::Ready(Ok(()))
        }
    }

    /// What h2 reads through the filter from a client that sent `input`,
    /// the same for any way the socket and h2 cut it up.
    async fn filter(input: &[u8]) -> Result<Vec<u8>, FilterError> {
        let mut results = Vec::new();
        for (chunk, read) in [
            (usize::MAX, 64 * 1024),
            (1, 1),
            (5, 7),
            (100, 4096),
            (9, 17),
        ] {
            let mut filter = AuthorityFilter::new(Chunked {
                input: input.iter().copied().collect(),
                chunk,
                pending: false,
            });
            let mut out = Vec::new();
            let mut piece = vec![0; read];
            let result = loop {
                match filter.read(&mut piece).await {
                    Ok(0) => break Ok(out),
                    Ok(n) => out.extend_from_slice(&piece[..n]),
                    Err(err) => {
                        let err = err.into_inner().expect("a FilterError");
                        break Err(*err.downcast::<FilterError>().expect("a FilterError"));
                    }
                }
            };
            results.push(result);
        }
        let first = results.remove(0);
        for other in results {
            assert_eq!(
                format!("{other:?}"),
                format!("{first:?}"),
                "the result depends on how the input is cut"
            );
        }
        first
    }

    #[derive(Debug, PartialEq)]
    struct Frame {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    /// Splits what passed the preface into frames.
    fn frames(mut bytes: &[u8]) -> Vec<Frame> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE, "the preface comes first");
        bytes = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let head = FrameHead::parse(&bytes[..FRAME_HEAD]);
            let end = FRAME_HEAD + head.len;
            out.push(Frame {
                kind: head.kind,
                flags: head.flags,
                stream: head.stream,
                payload: bytes[FRAME_HEAD..end].to_vec(),
            });
            bytes = &bytes[end..];
        }
        out
    }

    /// The header lists h2 decodes, with one HPACK decoder for the whole
    /// connection as h2 has; checks the frames obey berthd's settings.
    fn h2_decodes(bytes: &[u8]) -> Vec<Vec<(String, String)>> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut lists = Vec::new();
        let mut block: Option<Vec<u8>> = None;
        for frame in frames(bytes) {
            assert!(frame.payload.len() <= MAX_FRAME_SIZE as usize);
            match (frame.kind, &mut block) {
                (HEADERS, None) => {
                    let head = FrameHead {
                        len: frame.payload.len(),
                        kind: frame.kind,
                        flags: frame.flags,
                        stream: frame.stream,
                    };
                    let (_, fragment) = headers_payload(&head, &frame.payload).unwrap();
                    block = Some(fragment.to_vec());
                }
                (CONTINUATION, Some(block)) => block.extend_from_slice(&frame.payload),
                (_, None) => continue,
                (kind, Some(_)) => panic!("frame type {kind} inside a header block"),
            }
            if frame.flags & END_HEADERS != 0 {
                let block = block.take().unwrap();
                let list = decoder.decode(&block).expect("h2 decodes the block");
                lists.push(
                    list.into_iter()
                        .map(|(n, v)| {
                            (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                        })
                        .collect(),
                );
            }
        }
        assert!(block.is_none(), "a header block was left open");
        lists
    }

    #[tokio::test]
    async fn percent_encoded_socket_path_reads_localhost() {
        let mut input = opening();
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &grpc_request("run%2Fberth%2Fberth.sock"),
        ));
        let message = [0, 0, 0, 0, 7, 0x0a, 5, b'0', b'.', b'1', b'.', b'0'];
        input.extend(frame(DATA, END_STREAM, 1, &message));
        let out = filter(&input).await.unwrap();
        assert_eq!(h2_decodes(&out), [grpc_fields("localhost")]);
        let frames = frames(&out);
        assert_eq!(frames.len(), 4);
        assert_eq!(
            (frames[2].kind, frames[2].flags, frames[2].stream),
            (HEADERS, END_HEADERS, 1)
        );
        assert_eq!(frames[3].payload, message, "DATA passes as it came");
        assert_eq!(
            out[..opening().len()],
            opening(),
            "so do SETTINGS and WINDOW_UPDATE"
        );
    }

    #[tokio::test]
    async fn raw_socket_path_reads_localhost() {
        let mut input = opening();
        input.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &grpc_request("/run/berth/berth.sock"),
        ));
        let out = filter(&input).await.unwrap();
        assert_eq!(h2_decodes(&out), [grpc_fields("localhost")]);
        assert_eq!(frames(&out)[2].flags, END_HEADERS | END_STREAM);
    }

    #[tokio::test]
    async fn valid_authorities_pass_byte_for_byte() {
        for authority in ["localhost", "[::1]:50051", "berth.sock", "user@host:1", ""] {
            let mut input = opening();
            let mut block = grpc_request(authority);
            if authority.is_empty() {
                // No :authority at all (h2 takes that, Go clients never send it).
                block = [indexing(":path", "/x"), indexed(3), indexed(6)].concat();
            }
            input.extend(frame(HEADERS, END_HEADERS, 1, &block));
            input.extend(frame(HEADERS, END_HEADERS, 3, &indexed(62)));
            input.extend(frame(DATA, END_STREAM, 3, b"\0\0\0\0\0"));
            assert_eq!(filter(&input).await.unwrap(), input, "{authority:?}");
        }
    }

    #[tokio::test]
    async fn huffman_coded_authority_reads_localhost() {
        // `%2Frun%2Fberth%2Fberth.sock` Huffman-coded (RFC 7541 Appendix B),
        // by the Python hpack package's encoder.
        let huffman = [
            0x54, 0x58, 0x6c, 0xb6, 0xa5, 0x45, 0x86, 0x32, 0xd8, 0x99, 0xd5, 0x16, 0x18, 0xcb,
            0x62, 0x67, 0x5d, 0x07, 0x27, 0x5f,
        ];
        // A literal with incremental indexing whose name is static entry 1,
        // `:authority`, and whose value is 20 Huffman-coded bytes.
        let mut block = vec![0x41, 0x80 | 20];
        block.extend_from_slice(&huffman);
        block.extend([indexed(3), indexed(6), indexing(":path", "/p")].concat());
        let mut input = opening();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let out = filter(&input).await.unwrap();
        let expected = fields(&[
            (":authority", "localhost"),
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/p"),
        ]);
        assert_eq!(h2_decodes(&out), [expected]);

        // And a valid one Huffman-coded (RFC 7541 C.4.1) is left alone.
        let mut input = opening();
        let block = hex("828684418cf1e3c2e5f23a6ba0ab90f4ff");
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        assert_eq!(filter(&input).await.unwrap(), input);
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn block_split_over_continuation_frames() {
        let block = grpc_request("run%2Fberth%2Fberth.sock");
        // Cut inside the :authority value, and once more.
        let (a, rest) = block.split_at(50);
        let (b, c) = rest.split_at(10);
        let mut input = opening();
        input.extend(frame(HEADERS, END_STREAM, 1, a));
        input.extend(frame(CONTINUATION, 0, 1, b));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, c));
        let out = filter(&input).await.unwrap();
        assert_eq!(h2_decodes(&out), [grpc_fields("localhost")]);
        let frames = frames(&out);
        assert_eq!(frames.len(), 3, "one HEADERS frame holds the block again");
        assert_eq!(frames[2].flags, END_STREAM | END_HEADERS);

        // Passing unchanged, the frames stay as they were.
        let mut input = opening();
        let block = grpc_request("localhost");
        input.extend(frame(HEADERS, 0, 1, &block[..30]));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[30..]));
        assert_eq!(filter(&input).await.unwrap(), input);
    }

    #[tokio::test]
    async fn authority_from_the_dynamic_table_on_later_requests() {
        let mut input = opening();
        // 1: refused, so every block is re-encoded. The client's table is
        // now 62 te, 63 content-type, 64 :authority, 65 :path; h2's empty.
        input.extend(frame(HEADERS, END_HEADERS, 1, &grpc_request("a%2Fb.sock")));
        // 2: grpcio's second call: all from the table.
        let second = [65, 64, 3, 6, 63, 62].map(indexed).concat();
        input.extend(frame(HEADERS, END_HEADERS, 3, &second));
        // 3: a valid authority, indexed by the client, and the old :path,
        // now 66.
        let third = [indexing(":authority", "localhost"), indexed(66), indexed(3)].concat();
        input.extend(frame(HEADERS, END_HEADERS, 5, &third));
        // 4: both authorities from the table.
        let fourth = [indexed(62), indexed(65)].concat();
        input.extend(frame(HEADERS, END_HEADERS, 7, &fourth));
        let out = filter(&input).await.unwrap();

        let path = (":path", "/runtime.v1.RuntimeService/Version");
        let authority = (":authority", "localhost");
        let (post, http) = ((":method", "POST"), (":scheme", "http"));
        let content_type = ("content-type", "application/grpc");
        let expected = [
            grpc_fields("localhost"),
            fields(&[
                path,
                authority,
                post,
                http,
                content_type,
                ("te", "trailers"),
            ]),
            fields(&[authority, path, post]),
            fields(&[authority, authority]),
        ];
        assert_eq!(h2_decodes(&out), expected);
        // Literals without indexing: they neither use nor change h2's table.
        for (frame, fields) in frames(&out)[2..].iter().zip(&expected) {
            let mut literals = Vec::new();
            for (name, value) in fields {
                encode_literal(&mut literals, name.as_bytes(), value.as_bytes());
            }
            assert_eq!(frame.payload, literals);
        }
    }

    #[tokio::test]
    async fn a_connection_that_opens_with_a_valid_authority_passes_unread() {
        let mut input = opening();
        input.extend(frame(HEADERS, END_HEADERS, 1, &grpc_request("localhost")));
        // Never seen from a real client: h2 refuses this stream, as before.
        input.extend(frame(HEADERS, END_HEADERS, 3, &grpc_request("a%2Fb.sock")));
        // Not even read: garbage HPACK reaches h2, which ends the connection.
        input.extend(frame(HEADERS, END_HEADERS, 5, &[0x3f]));
        assert_eq!(filter(&input).await.unwrap(), input);
    }

    #[tokio::test]
    async fn padding_and_priority() {
        let block = grpc_request("run%2Fberth%2Fberth.sock");
        let priority = [0x80, 0, 0, 0, 0x10 - 0x0f];
        let mut payload = vec![3];
        payload.extend_from_slice(&priority[..]);
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0, 0, 0]);
        let flags = PADDED | PRIORITY | END_HEADERS | END_STREAM;
        let mut input = opening();
        input.extend(frame(HEADERS, flags, 1, &payload));
        let out = filter(&input).await.unwrap();
        assert_eq!(h2_decodes(&out), [grpc_fields("localhost")]);
        let frames = frames(&out);
        assert_eq!(
            frames[2].flags,
            PRIORITY | END_HEADERS | END_STREAM,
            "padding dropped"
        );
        assert_eq!(frames[2].payload[..5], priority, "priority kept");

        // Padded and valid: unchanged.
        let mut payload = vec![2];
        payload.extend_from_slice(&grpc_request("localhost"));
        payload.extend_from_slice(&[0, 0]);
        let mut input = opening();
        input.extend(frame(HEADERS, PADDED | END_HEADERS, 1, &payload));
        assert_eq!(filter(&input).await.unwrap(), input);

        // Padding as long as the payload is a protocol error.
        for (flags, payload) in [
            (PADDED, vec![1]),
            (PADDED, vec![9, 0x82]),
            (PRIORITY, vec![0, 0, 0]),
            (PADDED | PRIORITY, vec![1, 0, 0, 0, 0, 1]),
            (PADDED, vec![]),
        ] {
            let mut input = opening();
            input.extend(frame(HEADERS, flags | END_HEADERS, 1, &payload));
            assert!(
                matches!(
                    filter(&input).await,
                    Err(FilterError::Padding { stream: 1 })
                ),
                "{flags:#x} {payload:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_large_rewritten_block_is_cut_into_frames() {
        let big = "x".repeat(40 * 1024);
        let block = [
            grpc_request("/run/berth/berth.sock"),
            vec![0x00, 1, b'b'],
            {
                let mut value = Vec::new();
                encode_length(&mut value, big.len());
                value.extend_from_slice(big.as_bytes());
                value
            },
        ]
        .concat();
        let mut input = opening();
        let (a, rest) = block.split_at(MAX_FRAME_SIZE as usize);
        let (b, c) = rest.split_at(MAX_FRAME_SIZE as usize);
        input.extend(frame(HEADERS, 0, 1, a));
        input.extend(frame(CONTINUATION, 0, 1, b));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, c));
        let out = filter(&input).await.unwrap();
        let mut expected = grpc_fields("localhost");
        expected.push(("b".into(), big));
        assert_eq!(h2_decodes(&out), [expected]);
        let kinds: Vec<_> = frames(&out)[2..]
            .iter()
            .map(|f| (f.kind, f.flags))
            .collect();
        assert_eq!(
            kinds,
            [(HEADERS, 0), (CONTINUATION, 0), (CONTINUATION, END_HEADERS)]
        );
    }

    #[tokio::test]
    async fn big_data_frames_pass_unchanged() {
        let mut input = opening();
        input.extend(frame(HEADERS, END_HEADERS, 1, &grpc_request("a%2Fb")));
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        input.extend(frame(DATA, 0, 1, &data[..60_000]));
        input.extend(frame(DATA, END_STREAM, 1, &data[60_000..]));
        let out = filter(&input).await.unwrap();
        let frames = frames(&out);
        assert_eq!(
            [&frames[3].payload[..], &frames[4].payload[..]].concat(),
            data
        );
    }

    #[tokio::test]
    async fn limits_end_the_connection() {
        let with = |frames: &[Vec<u8>]| [opening(), frames.concat()].concat();
        // A header frame over SETTINGS_MAX_FRAME_SIZE.
        let oversize = frame(HEADERS, 0, 1, &vec![0; MAX_FRAME_SIZE as usize + 1]);
        assert!(matches!(
            filter(&with(&[oversize])).await,
            Err(FilterError::FrameSize { stream: 1, .. })
        ));
        // A CONTINUATION flood.
        let mut flood = vec![frame(HEADERS, 0, 1, &grpc_request("a%2Fb"))];
        flood.extend((0..7).map(|_| frame(CONTINUATION, 0, 1, &[])));
        assert!(matches!(
            filter(&with(&flood)).await,
            Err(FilterError::TooManyFrames { stream: 1 })
        ));
        // A 3.9 KB field and 20 one-byte references to it: 82 KB decoded.
        let mut bomb = indexing("a", &"v".repeat(3900));
        bomb.extend((0..20).flat_map(|_| indexed(62)));
        assert!(matches!(
            filter(&with(&[frame(HEADERS, END_HEADERS, 1, &bomb)])).await,
            Err(FilterError::TooLarge { stream: 1 })
        ));
        // A table size update past SETTINGS_HEADER_TABLE_SIZE, HPACK that
        // panicked the `hpack` crate (RUSTSEC-2023-0085), a cut integer and
        // an index past the table.
        for block in [
            vec![0x3f, 0xe2, 0x1f, 0x82],
            vec![0x3f],
            vec![0xff, 0x80],
            indexed(62),
        ] {
            assert!(matches!(
                filter(&with(&[frame(HEADERS, END_HEADERS, 1, &block)])).await,
                Err(FilterError::Hpack { stream: 1, .. })
            ));
        }
    }

    #[tokio::test]
    async fn framing_errors_end_the_connection() {
        let with = |frames: &[Vec<u8>]| [opening(), frames.concat()].concat();
        let request = grpc_request("a%2Fb");
        let cases = [
            with(&[frame(CONTINUATION, END_HEADERS, 1, &request)]),
            with(&[frame(HEADERS, 0, 1, &request), frame(DATA, 0, 1, b"x")]),
            with(&[
                frame(HEADERS, 0, 1, &request),
                frame(CONTINUATION, END_HEADERS, 3, &[]),
            ]),
            with(&[
                frame(HEADERS, 0, 1, &request),
                frame(HEADERS, END_HEADERS, 3, &request),
            ]),
            with(&[frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2])]),
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ];
        for input in cases {
            let err = filter(&input).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    FilterError::UnexpectedContinuation { .. }
                        | FilterError::Interleaved { .. }
                        | FilterError::PushPromise
                        | FilterError::Preface
                ),
                "{err}"
            );
        }
    }

    /// xorshift64: the same cases on every run.
    fn random(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    #[tokio::test]
    async fn generated_connections_read_as_the_client_meant() {
        let mut next = random(0x9e37_79b9_7f4a_7c15);
        let names = [":authority", ":path", "content-type", "grpc-timeout", "x-b"];
        let values = [
            "localhost",
            "run%2Fberth%2Fberth.sock",
            "/run/berth/berth.sock",
            "[::1]:50051",
            "a b",
            "",
            "10S",
            "\u{e9}t\u{e9}",
        ];
        for case in 0..300 {
            let mut input = opening();
            let mut expected = Vec::new();
            // The client's dynamic table, oldest first; small enough that
            // nothing is evicted.
            let mut table: Vec<(&str, &str)> = Vec::new();
            let mut first_refused = None;
            for stream in (1..8).step_by(2) {
                let mut block = Vec::new();
                let mut list = Vec::new();
                for _ in 0..1 + next() % 6 {
                    let reuse = !table.is_empty() && next() % 3 == 1;
                    let (name, value) = if reuse {
                        let at = next() as usize % table.len();
                        block.extend(indexed((62 + table.len() - 1 - at) as u8));
                        table[at]
                    } else {
                        let name = names[next() as usize % names.len()];
                        let value = values[next() as usize % values.len()];
                        let representation = [0x40, 0x00, 0x10][next() as usize % 3];
                        block.push(representation);
                        for string in [name, value] {
                            encode_length(&mut block, string.len());
                            block.extend_from_slice(string.as_bytes());
                        }
                        if representation == 0x40 {
                            table.push((name, value));
                        }
                        (name, value)
                    };
                    let refused = name == ":authority"
                        && http::uri::Authority::try_from(value.as_bytes()).is_err();
                    if stream == 1 {
                        first_refused = Some(first_refused.unwrap_or(false) || refused);
                    }
                    list.push((name, if refused { "localhost" } else { value }));
                }
                expected.push(fields(&list));
                // HEADERS (maybe padded, maybe with priority) and up to two
                // CONTINUATIONs, cut anywhere.
                let cuts = [
                    next() as usize % (block.len() + 1),
                    next() as usize % (block.len() + 1),
                ];
                let (a, b) = (cuts[0].min(cuts[1]), cuts[0].max(cuts[1]));
                let flags = next() as u8 & (PADDED | PRIORITY | END_STREAM);
                let mut payload = Vec::new();
                if flags & PADDED != 0 {
                    payload.push(2);
                }
                if flags & PRIORITY != 0 {
                    payload.extend([0, 0, 0, 0, 15]);
                }
                payload.extend_from_slice(&block[..a]);
                if flags & PADDED != 0 {
                    payload.extend([0, 0]);
                }
                let last = |end: bool| if end { END_HEADERS } else { 0 };
                input.extend(frame(
                    HEADERS,
                    flags | last(a == block.len()),
                    stream,
                    &payload,
                ));
                if a < block.len() {
                    let end = b == block.len();
                    input.extend(frame(CONTINUATION, last(end), stream, &block[a..b]));
                    if !end {
                        input.extend(frame(CONTINUATION, END_HEADERS, stream, &block[b..]));
                    }
                }
                input.extend(frame(DATA, END_STREAM, stream, b"\0\0\0\0\0"));
            }
            let out = filter(&input).await.unwrap();
            if first_refused == Some(true) {
                assert_eq!(h2_decodes(&out), expected, "case {case}");
            } else {
                assert_eq!(out, input, "case {case}: the first authority is valid");
            }
        }
    }

    #[test]
    fn arbitrary_header_frames_pass_or_end_the_connection() {
        let mut next = random(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            let mut rewriter = Rewriter::new();
            rewriter.preface = PREFACE.len();
            let mut out = Vec::new();
            for _ in 0..4 {
                let payload: Vec<u8> = (0..next() % 48).map(|_| next() as u8).collect();
                let kind = if next() % 4 == 1 {
                    CONTINUATION
                } else {
                    HEADERS
                };
                let flags = next() as u8 & (PADDED | PRIORITY | END_HEADERS | END_STREAM);
                let frame = frame(kind, flags, 1 + 2 * (next() % 2) as u32, &payload);
                if rewriter.step(&frame).unwrap() != Step::Block(frame.len())
                    || rewriter.take(&frame, &mut out).is_err()
                {
                    break;
                }
            }
            let mut rest = &out[..];
            while !rest.is_empty() {
                let head = FrameHead::parse(&rest[..FRAME_HEAD]);
                assert!(matches!(head.kind, HEADERS | CONTINUATION));
                assert!(head.len <= MAX_FRAME_SIZE as usize);
                rest = &rest[FRAME_HEAD + head.len..];
            }
        }
    }

    #[tokio::test]
    async fn a_client_that_stops_mid_frame_ends_the_stream() {
        let mut input = opening();
        input.extend(frame(HEADERS, END_HEADERS, 1, &grpc_request("a%2Fb")));
        input.truncate(input.len() - 3);
        assert_eq!(filter(&input).await.unwrap(), opening());
    }
}
