//! SPDY/3.1 tunnelled in WebSocket binary messages (KEP-4006): client-go
//! 1.30+ port-forwards over WebSocket with the subprotocol
//! `SPDY/3.1+portforward.k8s.io`, sending its SPDY byte stream as binary
//! messages cut anywhere (each write of its framer is one message, so a
//! frame spans several, a few bytes each). [`Tunnel`] turns the WebSocket
//! back into a byte stream, on which the SPDY session runs unchanged.
//!
//! Memory: one incoming message at a time (capped by the WebSocket's
//! configured maximum), read only as the session reads; outgoing messages
//! of at most [`MESSAGE_OUT`] bytes, written only once the socket took the
//! ones before them (the sink's readiness), so its buffer stays within the
//! WebSocket's write buffer plus one message.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Bytes, Message};

/// The most one outgoing message carries: the SPDY session writes batches
/// of up to 256 KiB, cut here into messages a client's reader takes whole.
const MESSAGE_OUT: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
enum TunnelError {
    #[error("text message in a SPDY tunnel (only binary messages carry it)")]
    Text,
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
}

impl From<TunnelError> for io::Error {
    fn from(err: TunnelError) -> io::Error {
        let kind = match err {
            TunnelError::Text => io::ErrorKind::InvalidData,
            TunnelError::WebSocket(_) => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

fn ws_error(err: tungstenite::Error) -> io::Error {
    TunnelError::WebSocket(err).into()
}

/// The close frame ending a session normally (1000): client-go reads it as
/// EOF, any other close (or none) as an error.
pub(crate) fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// A WebSocket as a byte stream: binary messages in, binary messages out.
pub(crate) struct Tunnel<IO> {
    ws: WebSocketStream<IO>,
    /// What is left of the message being read.
    unread: Bytes,
    /// The peer sent its close frame, or the connection ended.
    peer_closed: bool,
    /// Our close frame is queued.
    close_sent: bool,
}

impl<IO> Tunnel<IO> {
    pub(crate) fn new(ws: WebSocketStream<IO>) -> Self {
        Tunnel {
            ws,
            unread: Bytes::new(),
            peer_closed: false,
            close_sent: false,
        }
    }
}

impl<IO> Tunnel<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// The next message's bytes into `unread`; `Ok(false)` once the peer
    /// closed. Pings are answered by the WebSocket as it reads.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            if self.peer_closed {
                return Poll::Ready(Ok(false));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(bytes))) => {
                    // An empty message carries nothing; it is not EOF.
                    if !bytes.is_empty() {
                        self.unread = bytes;
                        return Poll::Ready(Ok(true));
                    }
                }
                Some(Ok(Message::Text(_))) => {
                    self.peer_closed = true;
                    return Poll::Ready(Err(TunnelError::Text.into()));
                }
                Some(Ok(Message::Close(_))) | None => self.peer_closed = true,
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    self.peer_closed = true;
                    return Poll::Ready(Err(ws_error(err)));
                }
            }
        }
    }
}

impl<IO> AsyncRead for Tunnel<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unread.is_empty() && !ready!(this.poll_message(cx))? {
            return Poll::Ready(Ok(()));
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<IO> AsyncWrite for Tunnel<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(ws_error)?;
        let n = data.len().min(MESSAGE_OUT);
        Pin::new(&mut this.ws)
            .start_send(Message::binary(data[..n].to_vec()))
            .map_err(ws_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(ws_error)
    }

    /// The close handshake: our close frame (unless the peer closed
    /// first, which the WebSocket answered), then the peer's, discarding
    /// what it still sent. The caller bounds how long this may take.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent && !this.peer_closed {
            if ready!(Pin::new(&mut this.ws).poll_ready(cx)).is_err() {
                return Poll::Ready(Ok(()));
            }
            this.close_sent = true;
            if Pin::new(&mut this.ws).start_send(normal_close()).is_err() {
                return Poll::Ready(Ok(()));
            }
        }
        if ready!(Pin::new(&mut this.ws).poll_flush(cx)).is_err() {
            return Poll::Ready(Ok(()));
        }
        this.unread = Bytes::new();
        while ready!(this.poll_message(cx)).unwrap_or(false) {
            this.unread = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// A tunnel (server side) and the raw WebSocket client talking to it.
    async fn pair() -> (Tunnel<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        (Tunnel::new(server), client)
    }

    #[tokio::test]
    async fn messages_read_as_one_byte_stream_whatever_their_cuts() {
        let (mut tunnel, mut client) = pair().await;
        // As client-go's framer writes a DATA frame: id, flags and length,
        // payload, each its own message; then two frames in one message.
        for piece in [&[0u8, 0, 0, 1][..], &[0, 0, 0, 3], b"abc", b"", b"defgh"] {
            client.send(Message::binary(piece.to_vec())).await.unwrap();
        }
        client.send(Message::Ping(Bytes::new())).await.unwrap();
        client.send(normal_close()).await.unwrap();
        let mut got = Vec::new();
        tunnel.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"\0\0\0\x01\0\0\0\x03abcdefgh");
        // The ping was answered; shutting down after the peer's close
        // sends the answer to it (and no close of our own).
        tunnel.shutdown().await.unwrap();
        assert!(matches!(client.next().await, Some(Ok(Message::Pong(_)))));
        assert!(matches!(client.next().await, Some(Ok(Message::Close(_)))));
        drop(tunnel);
        assert!(client.next().await.is_none());
    }

    #[tokio::test]
    async fn a_short_read_leaves_the_rest_of_the_message_for_the_next() {
        let (mut tunnel, mut client) = pair().await;
        client
            .send(Message::binary(b"0123456789".to_vec()))
            .await
            .unwrap();
        let mut buf = [0u8; 4];
        tunnel.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"0123");
        let mut rest = [0u8; 6];
        tunnel.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"456789");
    }

    #[tokio::test]
    async fn a_text_message_is_an_error() {
        let (mut tunnel, mut client) = pair().await;
        client.send(Message::text("hello")).await.unwrap();
        let err = tunnel.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[tokio::test]
    async fn writes_go_out_as_binary_messages_of_bounded_size() {
        let (mut tunnel, mut client) = pair().await;
        let data = vec![7u8; MESSAGE_OUT * 2 + 10];
        let reading = tokio::spawn(async move {
            let mut sizes = Vec::new();
            let mut total = 0;
            while total < MESSAGE_OUT * 2 + 10 {
                match client.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        total += b.len();
                        sizes.push(b.len());
                    }
                    other => panic!("{other:?}"),
                }
            }
            (sizes, client)
        });
        tunnel.write_all(&data).await.unwrap();
        tunnel.flush().await.unwrap();
        let (sizes, mut client) = reading.await.unwrap();
        assert_eq!(sizes, [MESSAGE_OUT, MESSAGE_OUT, 10]);

        // Shutdown closes with 1000 and waits for the peer's close, taking
        // (and dropping) what the peer still sent before it.
        let closing = tokio::spawn(async move {
            tunnel.shutdown().await.unwrap();
            tunnel
        });
        match client.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
            other => panic!("{other:?}"),
        }
        assert!(!closing.is_finished());
        // The client's reply: tungstenite answered the close already; a
        // flush sends it.
        client.flush().await.unwrap();
        let mut tunnel = tokio::time::timeout(std::time::Duration::from_secs(5), closing)
            .await
            .expect("shutdown waits only for the peer's close")
            .unwrap();
        assert!(tunnel.write(b"late").await.is_err());
    }

    #[tokio::test]
    async fn a_peer_that_stops_reading_holds_writes_back() {
        // A small pipe: what the client does not read stays in the
        // WebSocket's write buffer, which must stop growing.
        let (a, _b) = tokio::io::duplex(4 << 10);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let mut tunnel = Tunnel::new(server);
        let chunk = vec![0u8; MESSAGE_OUT];
        let mut written = 0usize;
        let stalled = tokio::time::timeout(std::time::Duration::from_millis(500), async {
            loop {
                written += tunnel.write(&chunk).await.unwrap();
            }
        })
        .await;
        assert!(stalled.is_err());
        // The default write buffer (128 KiB), one message past it and the pipe.
        assert!(
            written <= (128 << 10) + 2 * MESSAGE_OUT + (4 << 10),
            "{written}"
        );
    }
}
