//! The Kubernetes protocols over SPDY: remote command (`v4.channel.k8s.io`:
//! error, stdin, stdout, stderr and resize streams) and port-forward
//! (`portforward.k8s.io`: a data and an error stream per request).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::backend::{Backend, PortForwardRequest, Process};
use crate::protocol::{self, Outcome, ResizeDecoder};
use crate::server::{Inner, Target};
use crate::session::{self, Channels};
use crate::spdy::{Session, Stream, StreamWriter};

pub(crate) async fn serve<IO>(inner: Arc<Inner>, io: IO, target: Target)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (session, incoming) = Session::serve(io, inner.config.idle_timeout);
    match target {
        Target::PortForward(req) => {
            port_forward(inner.backend.clone(), session, incoming, req).await
        }
        Target::Exec(req) => {
            let (stdin, stdout, stderr, tty) = (req.stdin, req.stdout, req.stderr, req.tty);
            let backend = inner.backend.clone();
            let cmd = req.cmd.clone();
            let start = async move { backend.exec(&req).await };
            remote_command(
                inner,
                session,
                incoming,
                [stdin, stdout, stderr, tty],
                cmd,
                start,
            )
            .await
        }
        Target::Attach(req) => {
            let (stdin, stdout, stderr, tty) = (req.stdin, req.stdout, req.stderr, req.tty);
            let backend = inner.backend.clone();
            let start = async move { backend.attach(&req).await };
            remote_command(
                inner,
                session,
                incoming,
                [stdin, stdout, stderr, tty],
                Vec::new(),
                start,
            )
            .await
        }
    }
}

/// The streams a remote command waits for, by type.
#[derive(Default)]
struct Streams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

/// A kubectl exec/attach session over SPDY: the streams the client opens
/// (in any order), then the pumps, then the status frame. Long because the
/// stream set-up follows the protocol versions (v1 to v5) in one place.
async fn remote_command(
    inner: Arc<Inner>,
    session: Session,
    mut incoming: mpsc::Receiver<Stream>,
    [stdin, stdout, stderr, tty]: [bool; 4],
    cmd: Vec<String>,
    start: impl std::future::Future<Output = Result<Process, crate::backend::BackendError>>,
) {
    // The kubelet's count: error always; stderr not with a tty; resize
    // with a tty.
    let expected = 1 + stdin as usize + stdout as usize + (stderr && !tty) as usize + tty as usize;
    let mut streams = Streams::default();
    let mut got = 0;
    let collect = async {
        while got < expected {
            let Some(stream) = incoming.recv().await else {
                return false;
            };
            let slot = match stream.header("streamtype") {
                Some(protocol::STREAM_ERROR) => &mut streams.error,
                Some(protocol::STREAM_STDIN) => &mut streams.stdin,
                Some(protocol::STREAM_STDOUT) => &mut streams.stdout,
                Some(protocol::STREAM_STDERR) => &mut streams.stderr,
                Some(protocol::STREAM_RESIZE) => &mut streams.resize,
                _ => {
                    let _ = stream
                        .writer()
                        .reset(crate::spdy::frame::rst::REFUSED_STREAM);
                    continue;
                }
            };
            if slot.is_none() {
                got += 1;
            }
            *slot = Some(stream);
        }
        true
    };
    let complete = matches!(
        tokio::time::timeout(inner.config.stream_creation_timeout, collect).await,
        Ok(true)
    );
    if !complete || streams.error.is_none() {
        tracing::debug!("streaming: client did not open its streams");
        session.shutdown();
        return;
    }
    let error = streams.error.take().expect("checked").writer();
    let process = match start.await {
        Ok(p) => p,
        Err(err) => {
            let _ = error
                .write(&protocol::status_json(
                    &Outcome::Error(err.to_string()),
                    &cmd,
                ))
                .await;
            let _ = error.close();
            session.shutdown();
            return;
        }
    };
    let mut writers = tokio::task::JoinSet::new();
    let mut channels = Channels {
        stdin: None,
        stdout: None,
        stderr: None,
        resize: None,
        gone: Box::pin({
            let session = session.clone();
            async move { session.closed().await }
        }),
    };
    if let Some(stream) = streams.stdin.take() {
        let (tx, rx) = mpsc::channel(16);
        channels.stdin = Some(rx);
        let (mut reader, _) = stream.split();
        tokio::spawn(async move {
            while let Some(chunk) = reader.read().await {
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        });
    }
    for (stream, slot) in [
        (streams.stdout.take(), &mut channels.stdout),
        (streams.stderr.take(), &mut channels.stderr),
    ] {
        if let Some(stream) = stream {
            let (tx, rx) = mpsc::channel(16);
            *slot = Some(tx);
            writers.spawn(forward_out(rx, stream.writer()));
        }
    }
    if let Some(stream) = streams.resize.take() {
        let (tx, rx) = mpsc::channel(4);
        channels.resize = Some(rx);
        let (mut reader, _) = stream.split();
        tokio::spawn(async move {
            let mut decoder = ResizeDecoder::default();
            while let Some(chunk) = reader.read().await {
                let Ok(sizes) = decoder.feed(&chunk) else {
                    return;
                };
                for size in sizes {
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    let outcome = session::run(process, channels).await;
    if let Some(outcome) = outcome {
        while writers.join_next().await.is_some() {}
        let _ = error.write(&protocol::status_json(&outcome, &cmd)).await;
        let _ = error.close();
    }
    session.shutdown();
}

async fn forward_out(mut rx: mpsc::Receiver<Vec<u8>>, writer: StreamWriter) {
    while let Some(chunk) = rx.recv().await {
        if writer.write(&chunk).await.is_err() {
            return;
        }
    }
    let _ = writer.close();
}

/// Port-forward: streams come in pairs (error, data) sharing `port` and
/// `requestid` headers; each pair is one TCP connection into the pod.
async fn port_forward(
    backend: Arc<dyn Backend>,
    session: Session,
    mut incoming: mpsc::Receiver<Stream>,
    req: PortForwardRequest,
) {
    let mut pending: HashMap<String, (Option<Stream>, Option<Stream>)> = HashMap::new();
    while let Some(stream) = incoming.recv().await {
        let Some(port) = stream.header("port").and_then(|p| p.parse::<u16>().ok()) else {
            let _ = stream
                .writer()
                .reset(crate::spdy::frame::rst::PROTOCOL_ERROR);
            continue;
        };
        // Clients before requestID paired streams by port alone.
        let key = stream
            .header("requestid")
            .map_or_else(|| format!("port-{port}"), str::to_string);
        let entry = pending.entry(key.clone()).or_default();
        match stream.header("streamtype") {
            Some(protocol::STREAM_ERROR) => entry.0 = Some(stream),
            Some(protocol::STREAM_DATA) => entry.1 = Some(stream),
            _ => {
                let _ = stream
                    .writer()
                    .reset(crate::spdy::frame::rst::PROTOCOL_ERROR);
                continue;
            }
        }
        if let Some((Some(_), Some(_))) = pending.get(&key)
            && let Some((Some(error), Some(data))) = pending.remove(&key)
        {
            tokio::spawn(forward_pair(
                backend.clone(),
                session.clone(),
                req.clone(),
                port,
                error,
                data,
            ));
        }
    }
    session.shutdown();
}

async fn forward_pair(
    backend: Arc<dyn Backend>,
    session: Session,
    req: PortForwardRequest,
    port: u16,
    error: Stream,
    data: Stream,
) {
    let error = error.writer();
    let tcp = match backend.port_forward(&req, port).await {
        Ok(tcp) => tcp,
        Err(err) => {
            let _ = error.write(err.to_string().as_bytes()).await;
            let _ = error.close();
            let _ = data.writer().close();
            return;
        }
    };
    let (mut from_pod, mut to_pod) = tcp.into_split();
    let (mut reader, writer) = data.split();
    let upstream = async move {
        while let Some(chunk) = reader.read().await {
            if to_pod.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to_pod.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; session::CHUNK];
        loop {
            match from_pod.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer.write(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = writer.close();
    };
    // The pod closing ends the pair; the client's half-close only ends
    // what it sends.
    tokio::select! {
        _ = downstream => {}
        _ = async { upstream.await; std::future::pending::<()>().await } => {}
        _ = session.closed() => {}
    }
    let _ = error.close();
}
