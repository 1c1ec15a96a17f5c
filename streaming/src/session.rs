//! Runs one exec or attach [`Process`] against a protocol's channels:
//! the protocol adapters (SPDY, WebSocket) only move bytes between their
//! framing and these channels.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::backend::{Process, Reader};
use crate::protocol::{Outcome, TermSize};

/// How long output may still drain once the process exited (a background
/// child holding the pipe open must not keep the session forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// The most a pipe read (and so one output message or frame) carries.
pub const CHUNK: usize = 32 << 10;

pub struct Channels {
    /// From the client; closed means stdin EOF.
    pub stdin: Option<mpsc::Receiver<Vec<u8>>>,
    /// To the client; dropped at end of output.
    pub stdout: Option<mpsc::Sender<Vec<u8>>>,
    pub stderr: Option<mpsc::Sender<Vec<u8>>>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
    /// Resolves when the client has gone away.
    pub gone: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Runs `process` to its end (or the client's); returns how it ended, or
/// `None` when the client went away first (the process is then killed).
pub async fn run(mut process: Process, ch: Channels) -> Option<Outcome> {
    let mut tasks = tokio::task::JoinSet::new();
    if let (Some(mut stdin), Some(mut rx)) = (process.stdin.take(), ch.stdin) {
        tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if stdin.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = stdin.shutdown().await;
        });
    }
    let mut outputs = tokio::task::JoinSet::new();
    for (reader, tx) in [
        (process.stdout.take(), ch.stdout),
        (process.stderr.take(), ch.stderr),
    ] {
        if let (Some(reader), Some(tx)) = (reader, tx) {
            outputs.spawn(pump_out(reader, tx));
        }
    }
    if let (Some(resize), Some(mut rx)) = (process.resize.clone(), ch.resize) {
        tasks.spawn(async move {
            while let Some(size) = rx.recv().await {
                let resize = resize.clone();
                let _ = tokio::task::spawn_blocking(move || resize(size)).await;
            }
        });
    }
    let mut gone = ch.gone;
    let code = tokio::select! {
        code = &mut process.exit => code,
        _ = &mut gone => {
            (process.kill)();
            // Reap it; output pumps end with it.
            let _ = process.exit.await;
            return None;
        }
    };
    let drained = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
        while outputs.join_next().await.is_some() {}
    });
    tokio::select! {
        _ = drained => {}
        _ = &mut gone => return None,
    }
    Some(match code {
        Ok(Some(0)) | Ok(None) => Outcome::Success,
        Ok(Some(code)) => Outcome::ExitCode(code),
        Err(err) => Outcome::Error(err.to_string()),
    })
}

async fn pump_out(mut reader: Reader, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(buf[..n].to_vec()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A oneshot pair whose receiver resolves to `()` when the sender fires or
/// is dropped: the adapters' "client gone" signal.
pub fn gone_signal() -> (
    oneshot::Sender<()>,
    Pin<Box<dyn Future<Output = ()> + Send>>,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (
        tx,
        Box::pin(async move {
            let _ = rx.await;
        }),
    )
}
