//! A Distribution API v2 client: ping, auth (Basic, Bearer token flow,
//! anonymous tokens), manifests and streamed blobs.
//!
//! Written on reqwest rather than `oci-client` because the store needs the
//! raw blob stream (to hash, decompress and unpack while downloading) and
//! per-endpoint insecure handling from registries.conf.

use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use serde::Deserialize;

use crate::digest::Digest;
use crate::registries::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("registry {registry}: authentication failed ({status}){detail}")]
    Unauthorized {
        registry: String,
        status: u16,
        detail: String,
    },
    #[error("registry {registry}: {what} not found")]
    NotFound { registry: String, what: String },
    #[error("registry {registry}: {what}: HTTP {status}")]
    Status {
        registry: String,
        what: String,
        status: u16,
    },
    #[error("registry {registry}: {what}: {source}")]
    Http {
        registry: String,
        what: String,
        source: reqwest::Error,
    },
    #[error("registry {registry}: {what} is larger than {limit} bytes")]
    TooLarge {
        registry: String,
        what: String,
        limit: usize,
    },
    #[error(
        "registry {registry}: token realm {realm} is plain HTTP; credentials are sent over \
         plain HTTP only for a registry configured insecure"
    )]
    PlainHttpRealm { registry: String, realm: String },
    #[error("registry {registry}: bad auth challenge {challenge:?}")]
    Challenge { registry: String, challenge: String },
    #[error("registry {registry}: {what}: no progress for {timeout:?}")]
    Stalled {
        registry: String,
        what: String,
        timeout: Duration,
    },
}

impl ClientError {
    /// Whether trying again may succeed: the connection failed or dropped,
    /// or the registry answered 5xx, 408 or 429. A stall is not retried:
    /// the progress timeout bounds how long a pull may hang.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Http { source, .. } => {
                source.is_connect() || source.is_request() || source.is_body() || source.is_decode()
            }
            ClientError::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            _ => false,
        }
    }
}

/// The largest manifest, index or config accepted (as containers/image).
pub const MAX_DOCUMENT: usize = 4 << 20;

/// Credentials from `PullImageRequest.auth`.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// An OAuth2 refresh token (`identity_token`).
    pub identity_token: String,
    /// A bearer token to send as is (`registry_token`).
    pub registry_token: String,
    /// The registry they were given for (`server_address`); empty: the
    /// image's own. They are sent to that registry only.
    pub server_address: String,
}

impl Credentials {
    pub fn is_empty(&self) -> bool {
        self.username.is_empty()
            && self.password.is_empty()
            && self.identity_token.is_empty()
            && self.registry_token.is_empty()
    }

    /// Decodes the docker `auth` field: base64 of `user:password`.
    pub fn from_auth_field(auth: &str) -> Option<Credentials> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (username, password) = text.split_once(':')?;
        Some(Credentials {
            username: username.into(),
            password: password.into(),
            ..Credentials::default()
        })
    }
}

/// HTTP clients shared by every pull (connection pools, TLS config).
#[derive(Clone)]
pub struct Client {
    verified: reqwest::Client,
    unverified: reqwest::Client,
    progress_timeout: Duration,
}

impl Client {
    /// A registry that sends nothing for `progress_timeout` (no response
    /// head, no body bytes) fails the request instead of hanging the pull.
    pub fn new(progress_timeout: Duration) -> Client {
        let build = |verify: bool| {
            reqwest::Client::builder()
                .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(30).min(progress_timeout))
                .read_timeout(progress_timeout)
                .danger_accept_invalid_certs(!verify)
                .build()
                .expect("TLS backend initialises")
        };
        Client {
            verified: build(true),
            unverified: build(false),
            progress_timeout,
        }
    }

    /// Opens a session on one endpoint for `repo` (pull scope): pings
    /// `/v2/`, falls back to plain HTTP for an insecure endpoint, and
    /// answers the auth challenge.
    pub async fn session(
        &self,
        endpoint: &Endpoint,
        creds: &Credentials,
    ) -> Result<Session, ClientError> {
        let http = if endpoint.insecure {
            &self.unverified
        } else {
            &self.verified
        };
        let registry = endpoint.host.clone();
        let timeout = self.progress_timeout;
        let err = |what: &str| {
            let registry = registry.clone();
            let what = what.to_string();
            move |source| http_error(registry, what, timeout, source)
        };
        let mut base = format!("https://{}", endpoint.host);
        let ping = match http.get(format!("{base}/v2/")).send().await {
            Ok(resp) => resp,
            Err(e) if endpoint.insecure && (e.is_connect() || e.is_request()) => {
                base = format!("http://{}", endpoint.host);
                http.get(format!("{base}/v2/"))
                    .send()
                    .await
                    .map_err(err("ping /v2/"))?
            }
            Err(e) => return Err(err("ping /v2/")(e)),
        };
        let mut session = Session {
            http: http.clone(),
            base,
            registry: registry.clone(),
            repo: endpoint.path.clone(),
            insecure: endpoint.insecure,
            authorization: None,
            progress_timeout: self.progress_timeout,
        };
        if !creds.registry_token.is_empty() {
            session.authorization = Some(format!("Bearer {}", creds.registry_token));
            return Ok(session);
        }
        if ping.status() != StatusCode::UNAUTHORIZED {
            return Ok(session);
        }
        let challenge = ping
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        session.authorization = Some(session.answer(&challenge, creds).await?);
        Ok(session)
    }
}

/// An authenticated conversation with one repository on one registry.
pub struct Session {
    http: reqwest::Client,
    base: String,
    registry: String,
    repo: String,
    /// Configured insecure: plain HTTP may carry its credentials.
    insecure: bool,
    authorization: Option<String>,
    progress_timeout: Duration,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
}

impl Session {
    pub fn registry(&self) -> &str {
        &self.registry
    }

    fn http_error(&self, what: &str, source: reqwest::Error) -> ClientError {
        http_error(
            self.registry.clone(),
            what.into(),
            self.progress_timeout,
            source,
        )
    }

    async fn answer(&self, challenge: &str, creds: &Credentials) -> Result<String, ClientError> {
        let bad = || ClientError::Challenge {
            registry: self.registry.clone(),
            challenge: challenge.to_string(),
        };
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let unauthorized = |status: u16, detail: &str| ClientError::Unauthorized {
            registry: self.registry.clone(),
            status,
            detail: detail.to_string(),
        };
        if scheme.eq_ignore_ascii_case("basic") {
            if creds.username.is_empty() && creds.password.is_empty() {
                return Err(unauthorized(401, ": no credentials given"));
            }
            return Ok(basic(creds));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(bad());
        }
        let params = parse_params(params);
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .ok_or_else(bad)?;
        let mut query: Vec<(String, String)> =
            params.into_iter().filter(|(k, _)| k == "service").collect();
        query.push(("scope".into(), format!("repository:{}:pull", self.repo)));
        let what = "token request";
        let http_err = |source| self.http_error(what, source);
        let sends_credentials = !creds.identity_token.is_empty()
            || !creds.username.is_empty()
            || !creds.password.is_empty();
        // The realm is the registry's (or a man in the middle's) choice: a
        // secure registry's secrets must not leave over plain HTTP.
        if sends_credentials && !self.insecure && !starts_with_ignore_case(&realm, "https://") {
            return Err(ClientError::PlainHttpRealm {
                registry: self.registry.clone(),
                realm,
            });
        }
        let resp = if !creds.identity_token.is_empty() {
            let mut form = query.clone();
            form.push(("grant_type".into(), "refresh_token".into()));
            form.push(("refresh_token".into(), creds.identity_token.clone()));
            form.push(("client_id".into(), "berth".into()));
            self.http.post(&realm).form(&form).send().await
        } else {
            let mut req = self.http.get(&realm).query(&query);
            if !creds.username.is_empty() || !creds.password.is_empty() {
                req = req.header(AUTHORIZATION, basic(creds));
            }
            req.send().await
        }
        .map_err(http_err)?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(unauthorized(
                status.as_u16(),
                ": the token server refused the credentials",
            ));
        }
        if !status.is_success() {
            return Err(ClientError::Status {
                registry: self.registry.clone(),
                what: what.into(),
                status: status.as_u16(),
            });
        }
        // Capped as a manifest is: a hostile token server must not be able
        // to make berthd buffer an endless body.
        let body = self.read_capped(resp, what).await?;
        let token: TokenResponse = serde_json::from_slice(&body).map_err(|_| bad())?;
        let token = if token.token.is_empty() {
            token.access_token
        } else {
            token.token
        };
        if token.is_empty() {
            return Err(bad());
        }
        Ok(format!("Bearer {token}"))
    }

    async fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Response, ClientError> {
        let mut req = self
            .http
            .get(format!("{}/v2/{}/{path}", self.base, self.repo));
        if let Some(auth) = &self.authorization {
            req = req.header(AUTHORIZATION, auth);
        }
        if let Some(accept) = accept {
            req = req.header(ACCEPT, accept);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| self.http_error(what, source))?;
        let status = resp.status();
        match status {
            s if s.is_success() => Ok(resp),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(ClientError::Unauthorized {
                registry: self.registry.clone(),
                status: status.as_u16(),
                detail: format!(" fetching {what}"),
            }),
            StatusCode::NOT_FOUND => Err(ClientError::NotFound {
                registry: self.registry.clone(),
                what: what.into(),
            }),
            _ => Err(ClientError::Status {
                registry: self.registry.clone(),
                what: what.into(),
                status: status.as_u16(),
            }),
        }
    }

    /// Fetches a manifest by tag or digest: (content type, body).
    pub async fn manifest(&self, reference: &str) -> Result<(String, Vec<u8>), ClientError> {
        let what = format!("manifest {}:{reference}", self.repo);
        let resp = self
            .get(
                &format!("manifests/{reference}"),
                Some(crate::manifest::ACCEPT),
                &what,
            )
            .await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = self.read_capped(resp, &what).await?;
        Ok((content_type, body))
    }

    /// Reads a small JSON document (manifest, index, config), refusing one
    /// larger than [`MAX_DOCUMENT`] so a hostile registry cannot exhaust memory.
    pub async fn read_capped(
        &self,
        mut resp: Response,
        what: &str,
    ) -> Result<Vec<u8>, ClientError> {
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_DOCUMENT {
                        return Err(ClientError::TooLarge {
                            registry: self.registry.clone(),
                            what: what.into(),
                            limit: MAX_DOCUMENT,
                        });
                    }
                }
                Ok(None) => return Ok(body),
                Err(source) => return Err(self.http_error(what, source)),
            }
        }
    }

    /// Starts a blob download; the caller streams and verifies the body.
    pub async fn blob(&self, digest: &Digest) -> Result<Response, ClientError> {
        self.get(&format!("blobs/{digest}"), None, &format!("blob {digest}"))
            .await
    }

    pub fn stream_error(&self, digest: &Digest, source: reqwest::Error) -> ClientError {
        self.http_error(&format!("blob {digest}"), source)
    }
}

fn http_error(
    registry: String,
    what: String,
    timeout: Duration,
    source: reqwest::Error,
) -> ClientError {
    if source.is_timeout() {
        ClientError::Stalled {
            registry,
            what,
            timeout,
        }
    } else {
        ClientError::Http {
            registry,
            what,
            source,
        }
    }
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

fn basic(creds: &Credentials) -> String {
    let raw = format!("{}:{}", creds.username, creds.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Parses `k="v",k2=v2` (auth-param list of RFC 7235).
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((key, value));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A plain-HTTP registry whose token server answers 8 MiB.
    async fn endless_token_server() -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let realm = format!("http://{addr}/token");
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let realm = realm.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                        // A TLS ClientHello (the first try is HTTPS): hang up.
                        if !head.starts_with(b"G") {
                            return;
                        }
                    }
                    if head.starts_with(b"GET /v2/ ") {
                        let reply = format!(
                            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"t\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        let _ = tcp.write_all(reply.as_bytes()).await;
                    } else if head.starts_with(b"GET /token") {
                        let size = 8 << 20;
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
                        );
                        let _ = tcp.write_all(reply.as_bytes()).await;
                        let _ = tcp.write_all(&vec![b' '; size]).await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_token_body_over_the_cap_is_refused() {
        let host = endless_token_server().await;
        let endpoint = Endpoint {
            host,
            path: "library/x".into(),
            insecure: true,
        };
        let err = Client::new(Duration::from_secs(10))
            .session(&endpoint, &Credentials::default())
            .await
            .err()
            .expect("the session is refused");
        assert!(
            matches!(&err, ClientError::TooLarge { what, .. } if what == "token request"),
            "{err}"
        );
    }

    /// A plain-HTTP token server that records each request's head.
    async fn recording_token_server() -> (String, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let body = r#"{"token":"t"}"#;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(reply.as_bytes()).await;
            }
        });
        (realm, heads)
    }

    fn session_on(insecure: bool) -> Session {
        Session {
            http: reqwest::Client::new(),
            base: "https://registry.test".into(),
            registry: "registry.test".into(),
            repo: "team/app".into(),
            insecure,
            authorization: None,
            progress_timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn credentials_never_go_to_a_plain_http_realm_of_a_secure_registry() {
        let (realm, heads) = recording_token_server().await;
        let challenge = format!("Bearer realm=\"{realm}\",service=\"s\"");
        let basic = Credentials {
            username: "u".into(),
            password: "p".into(),
            ..Credentials::default()
        };
        let refresh = Credentials {
            identity_token: "refresh-secret".into(),
            ..Credentials::default()
        };
        for creds in [&basic, &refresh] {
            let err = session_on(false)
                .answer(&challenge, creds)
                .await
                .expect_err("the credentials are withheld");
            assert!(
                matches!(&err, ClientError::PlainHttpRealm { realm: r, .. } if *r == realm),
                "{err}"
            );
        }
        assert!(
            berth_host::sync::lock(&heads).is_empty(),
            "no request reached the realm"
        );

        // Anonymous tokens carry no secret: a plain-HTTP realm may serve them.
        let anonymous = session_on(false)
            .answer(&challenge, &Credentials::default())
            .await
            .unwrap();
        assert_eq!(anonymous, "Bearer t");
        assert!(!berth_host::sync::lock(&heads)[0].contains("uthorization"));

        // A registry configured insecure has accepted plain HTTP.
        session_on(true).answer(&challenge, &basic).await.unwrap();
        assert!(berth_host::sync::lock(&heads)[1].contains("Basic dTpw"));
    }

    #[test]
    fn challenge_params() {
        let p = parse_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(
            p,
            [
                ("realm".into(), "https://auth.docker.io/token".into()),
                ("service".into(), "registry.docker.io".into()),
                (
                    "scope".into(),
                    "repository:library/busybox:pull,push".into()
                ),
            ]
        );
        assert_eq!(
            parse_params("realm=x, service=y")[1],
            ("service".into(), "y".into())
        );
    }

    #[test]
    fn auth_field() {
        let c = Credentials::from_auth_field("dXNlcjpwYTpzcw==").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "pa:ss")
        );
    }
}
