//! The streaming HTTP server: single-use URLs for exec, attach and
//! port-forward, upgraded to SPDY/3.1 or WebSocket as the client asks.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::backend::{AttachRequest, Backend, ExecRequest, PortForwardRequest};
use crate::protocol::{self, PROTOCOL_HEADER};
use crate::{spdy_exec, ws};

/// How long a URL stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks one.
    pub addr: SocketAddr,
    /// Sessions without traffic for this long are closed (kubelet: 4 h).
    pub idle_timeout: Duration,
    /// How long a client has to open its streams after upgrading.
    pub stream_creation_timeout: Duration,
    /// Serve HTTPS with this certificate and key instead of HTTP.
    pub tls: Option<TlsFiles>,
    /// How long a connection may take from accept to its upgrade (TLS
    /// handshake and request included); then it is closed, so idle or
    /// trickling connections cannot hold the server's file descriptors.
    pub upgrade_timeout: Duration,
    /// Connections at once that have not upgraded yet; more are closed as
    /// soon as they are accepted. Upgraded sessions are bounded apart, by
    /// their single-use tokens.
    pub max_pending_connections: usize,
}

/// PEM files: the certificate chain (leaf first) and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            idle_timeout: Duration::from_secs(4 * 3600),
            stream_creation_timeout: Duration::from_secs(30),
            tls: None,
            upgrade_timeout: Duration::from_secs(10),
            max_pending_connections: 256,
        }
    }
}

/// What a token stands for.
#[derive(Debug, Clone)]
pub enum Target {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

struct Tokens {
    map: Mutex<HashMap<String, (Target, Instant)>>,
}

impl Tokens {
    fn insert(&self, target: Target) -> String {
        let mut bytes = [0u8; 18];
        random(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let mut map = berth_host::sync::lock(&self.map);
        let now = Instant::now();
        map.retain(|_, (_, at)| now.duration_since(*at) < TOKEN_TTL);
        map.insert(token.clone(), (target, now));
        token
    }

    /// Takes the token's target: a token works once, within its TTL.
    fn take(&self, token: &str) -> Option<Target> {
        let (target, at) = berth_host::sync::lock(&self.map).remove(token)?;
        (at.elapsed() < TOKEN_TTL).then_some(target)
    }
}

fn random(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("/dev/urandom is readable");
}

pub(crate) struct Inner {
    pub backend: Arc<dyn Backend>,
    pub config: Config,
    tokens: Tokens,
}

/// The running server; dropping it stops accepting connections.
pub struct StreamingServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    scheme: &'static str,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl StreamingServer {
    /// Binds `config.addr` and serves.
    pub async fn start(
        config: Config,
        backend: Arc<dyn Backend>,
    ) -> std::io::Result<StreamingServer> {
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            backend,
            config,
            tokens: Tokens {
                map: Mutex::new(HashMap::new()),
            },
        });
        let accept = tokio::spawn(accept_loop(listener, tls, inner.clone()));
        Ok(StreamingServer {
            inner,
            addr,
            scheme,
            accept,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the server answers, e.g. `http://127.0.0.1:41234/`.
    pub fn base_url(&self) -> String {
        format!("{}://{}/", self.scheme, self.addr)
    }

    fn url(&self, kind: &str, target: Target) -> String {
        let token = self.inner.tokens.insert(target);
        format!("{}{kind}/{token}", self.base_url())
    }

    /// The URL of a new exec session (the CRI `Exec` answer).
    pub fn exec_url(&self, req: ExecRequest) -> String {
        self.url("exec", Target::Exec(req))
    }

    pub fn attach_url(&self, req: AttachRequest) -> String {
        self.url("attach", Target::Attach(req))
    }

    pub fn port_forward_url(&self, req: PortForwardRequest) -> String {
        self.url("portforward", Target::PortForward(req))
    }
}

fn tls_acceptor(files: &TlsFiles) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &PathBuf, what: &str, err: &dyn std::fmt::Display| {
        std::io::Error::other(format!("streaming TLS {what} {}: {err}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| bad(&files.cert, "certificate", &err))?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|err| bad(&files.key, "key", &err))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|err| bad(&files.cert, "certificate and key", &err))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    inner: Arc<Inner>,
) {
    let pending = Arc::new(tokio::sync::Semaphore::new(
        inner.config.max_pending_connections,
    ));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                tcp
            }
            Err(error) => {
                // EMFILE and ENFILE persist until descriptors are freed:
                // retrying at once would spin a worker thread.
                tracing::warn!(%error, "streaming server: accept failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let inner = inner.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let limit = inner.config.upgrade_timeout;
            let serve = async {
                match tls {
                    None => serve_http(tcp, inner).await,
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            serve_http(stream, inner).await;
                        }
                    }
                }
            };
            // An upgraded session lives on in its own task: this only
            // bounds the handshake and the request.
            let _ = tokio::time::timeout(limit, serve).await;
            drop(permit);
        });
    }
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

async fn serve_http<IO>(io: IO, inner: Arc<Inner>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let inner = inner.clone();
        async move { Ok::<_, Infallible>(route(inner, req)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
}

type Resp = Response<Full<Bytes>>;

fn plain(status: StatusCode, text: &str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn header_values<'a>(req: &'a Request<Incoming>, name: &str) -> Vec<&'a str> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// One request's route: token, method, protocol (SPDY or WebSocket,
/// with their version headers) and the upgrade. Long because it is the
/// table of what each URL accepts.
fn route(inner: Arc<Inner>, mut req: Request<Incoming>) -> Resp {
    let path = req.uri().path().trim_matches('/').to_string();
    let Some((kind, token)) = path.split_once('/') else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    if !matches!(kind, "exec" | "attach" | "portforward") {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    // Taken before anything else: a token is spent by its first use.
    let Some(target) = inner.tokens.take(token) else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    let kind_matches = matches!(
        (kind, &target),
        ("exec", Target::Exec(_))
            | ("attach", Target::Attach(_))
            | ("portforward", Target::PortForward(_))
    );
    if !kind_matches {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    let upgrade = header_values(&req, "upgrade")
        .join(",")
        .to_ascii_lowercase();
    let on_upgrade = hyper::upgrade::on(&mut req);
    if upgrade.split(',').any(|u| u.trim() == "websocket") {
        let offered = header_values(&req, "sec-websocket-protocol");
        let ours: &[&'static str] = match target {
            Target::PortForward(_) => &[
                protocol::WS_SPDY_PORT_FORWARD,
                protocol::SPDY_PORT_FORWARD,
                protocol::WS_V4,
                protocol::WS_V4_BASE64,
                protocol::WS_V1,
                protocol::WS_V1_BASE64,
            ],
            _ => &[
                protocol::WS_V5,
                protocol::WS_V4,
                protocol::WS_V4_BASE64,
                protocol::WS_V1,
                protocol::WS_V1_BASE64,
            ],
        };
        let chosen = protocol::negotiate(offered.iter().copied(), ours);
        if chosen.is_none() && !offered.is_empty() {
            return plain(
                StatusCode::BAD_REQUEST,
                &format!(
                    "unable to negotiate a WebSocket subprotocol: client offers {offered:?}, server accepts {ours:?}"
                ),
            );
        }
        let Some(key) = req.headers().get("sec-websocket-key") else {
            return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let query = req.uri().query().unwrap_or("").to_string();
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            "sec-websocket-accept",
            HeaderValue::from_str(&accept).expect("base64 is a valid header"),
        );
        if let Some(p) = chosen {
            h.insert("sec-websocket-protocol", HeaderValue::from_static(p));
        }
        let protocol = chosen.unwrap_or(protocol::WS_V1);
        tokio::spawn(async move {
            let Ok(io) = on_upgrade.await else { return };
            if protocol == protocol::WS_SPDY_PORT_FORWARD {
                let tunnel = ws::tunnel(TokioIo::new(io)).await;
                spdy_exec::serve(inner, tunnel, target).await;
            } else {
                ws::serve(inner, TokioIo::new(io), target, protocol, &query).await;
            }
        });
        return resp;
    }
    if upgrade.split(',').any(|u| u.trim() == "spdy/3.1") {
        let offered = header_values(&req, PROTOCOL_HEADER);
        let ours: &[&'static str] = match target {
            Target::PortForward(_) => &[protocol::SPDY_PORT_FORWARD],
            _ => &[protocol::SPDY_EXEC_V4],
        };
        let Some(chosen) = protocol::negotiate(offered.iter().copied(), ours) else {
            return plain(
                StatusCode::FORBIDDEN,
                &format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {ours:?}"
                ),
            );
        };
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        h.insert(PROTOCOL_HEADER, HeaderValue::from_static(chosen));
        tokio::spawn(async move {
            let Ok(io) = on_upgrade.await else { return };
            spdy_exec::serve(inner, TokioIo::new(io), target).await;
        });
        return resp;
    }
    plain(
        StatusCode::BAD_REQUEST,
        "upgrade request required (SPDY/3.1 or websocket)",
    )
}
