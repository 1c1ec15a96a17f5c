//! NRI runs two ttrpc connections over one unix socket: each chunk is
//! framed by an 8-byte header, the connection's ID and the chunk's length,
//! both big-endian. Connection 1 carries the plugin's service (the runtime
//! is its client), connection 2 the runtime's (the plugin is its client).

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub const PLUGIN_SERVICE: u32 = 1;
pub const RUNTIME_SERVICE: u32 = 2;

const HEADER_LEN: usize = 8;
/// A ttrpc message header and its largest payload: the peer's limit.
const MAX_CHUNK: usize = 10 + (4 << 20);
/// Bytes buffered per direction of each logical connection.
const PIPE_SIZE: usize = 256 * 1024;

/// The two logical connections of one trunk. Dropping it closes the trunk.
pub struct Mux {
    pub plugin: Option<DuplexStream>,
    pub runtime: Option<DuplexStream>,
    tasks: JoinSet<()>,
}

impl Mux {
    /// Splits `trunk`; the returned `closed` resolves when the peer has
    /// hung up or sent a frame that breaks the protocol.
    pub fn new(trunk: UnixStream) -> (Mux, tokio::sync::oneshot::Receiver<()>) {
        let (mut reader, mut writer) = trunk.into_split();
        let (plugin, plugin_far) = tokio::io::duplex(PIPE_SIZE);
        let (runtime, runtime_far) = tokio::io::duplex(PIPE_SIZE);
        let (plugin_far_read, mut plugin_far_write) = tokio::io::split(plugin_far);
        let (runtime_far_read, mut runtime_far_write) = tokio::io::split(runtime_far);
        let (frames, mut outgoing) = mpsc::channel::<Vec<u8>>(16);
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut header = [0u8; HEADER_LEN];
            let mut chunk = Vec::new();
            loop {
                if reader.read_exact(&mut header).await.is_err() {
                    break;
                }
                let id = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
                let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
                if len > MAX_CHUNK {
                    tracing::warn!(len, "NRI peer sent an oversized frame: closing");
                    break;
                }
                chunk.resize(len, 0);
                if reader.read_exact(&mut chunk).await.is_err() {
                    break;
                }
                let delivered = match id {
                    PLUGIN_SERVICE => plugin_far_write.write_all(&chunk).await,
                    RUNTIME_SERVICE => runtime_far_write.write_all(&chunk).await,
                    // As the reference: data for a connection nobody opened is dropped.
                    _ => Ok(()),
                };
                if delivered.is_err() {
                    break;
                }
            }
            let _ = closed_tx.send(());
        });
        for (id, mut far) in [
            (PLUGIN_SERVICE, plugin_far_read),
            (RUNTIME_SERVICE, runtime_far_read),
        ] {
            let frames = frames.clone();
            tasks.spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match far.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut frame = Vec::with_capacity(HEADER_LEN + n);
                    frame.extend_from_slice(&id.to_be_bytes());
                    frame.extend_from_slice(&(n as u32).to_be_bytes());
                    frame.extend_from_slice(&buf[..n]);
                    if frames.send(frame).await.is_err() {
                        break;
                    }
                }
            });
        }
        drop(frames);
        tasks.spawn(async move {
            while let Some(frame) = outgoing.recv().await {
                if writer.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        let mux = Mux {
            plugin: Some(plugin),
            runtime: Some(runtime),
            tasks,
        };
        (mux, closed)
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_reach_their_connection_and_carry_the_header() {
        let (near, mut far) = UnixStream::pair().unwrap();
        let (mut mux, _closed) = Mux::new(near);
        let mut runtime = mux.runtime.take().unwrap();
        let mut plugin = mux.plugin.take().unwrap();
        // Peer to runtime connection.
        let mut frame = RUNTIME_SERVICE.to_be_bytes().to_vec();
        frame.extend_from_slice(&3u32.to_be_bytes());
        frame.extend_from_slice(b"abc");
        far.write_all(&frame).await.unwrap();
        let mut got = [0u8; 3];
        runtime.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
        // Plugin connection to peer.
        plugin.write_all(b"xy").await.unwrap();
        let mut out = [0u8; 10];
        far.read_exact(&mut out).await.unwrap();
        assert_eq!(&out[..4], &PLUGIN_SERVICE.to_be_bytes());
        assert_eq!(&out[4..8], &2u32.to_be_bytes());
        assert_eq!(&out[8..], b"xy");
    }

    #[tokio::test]
    async fn an_oversized_frame_closes_the_trunk() {
        let (near, mut far) = UnixStream::pair().unwrap();
        let (_mux, closed) = Mux::new(near);
        let mut frame = PLUGIN_SERVICE.to_be_bytes().to_vec();
        frame.extend_from_slice(&u32::MAX.to_be_bytes());
        far.write_all(&frame).await.unwrap();
        closed.await.unwrap();
    }
}
