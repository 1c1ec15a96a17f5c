//! A minimal Distribution API server over an OCI layout, for fault
//! injection only: it can stall a blob half way (to kill berthd mid-pull),
//! counts blob fetches (to prove shared layers are fetched once), and can
//! demand Bearer tokens from its own token endpoint (Debian has no token
//! server to pair with docker-registry). Everything else is tested against
//! the real registry in [`crate::registry`].

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Shared {
    /// Digest (`sha256:…`) to stall on its first fetch.
    stall_once: Mutex<Option<String>>,
    stalled: AtomicBool,
    fetches: Mutex<HashMap<String, usize>>,
    /// Token requests seen: the Authorization header each carried.
    token_requests: Mutex<Vec<String>>,
    stop: AtomicBool,
}

pub struct FaultRegistry {
    port: u16,
    shared: Arc<Shared>,
}

/// What the server demands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    /// Bearer tokens from `/token`; anonymous tokens are granted too.
    Bearer,
}

pub const TOKEN: &str = "fault-registry-token";

impl FaultRegistry {
    /// Serves the OCI layout `layout` as repository `berth/<tag>` for each of its tags.
    pub fn start(layout: &Path, auth: Auth) -> FaultRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let layout = layout.to_path_buf();
        let s = shared.clone();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (s, layout) = (s.clone(), layout.clone());
                        stream.set_nonblocking(false).unwrap();
                        std::thread::spawn(move || serve(stream, &layout, &s, auth, port));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FaultRegistry { port, shared }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn image(&self, tag: &str) -> String {
        format!("{}/berth/{tag}:latest", self.host())
    }

    /// Stalls the first fetch of `digest` after half its bytes, until dropped.
    pub fn stall_once(&self, digest: &str) {
        *self.shared.stall_once.lock().unwrap() = Some(digest.to_string());
    }

    /// Whether a stalled fetch is in progress.
    pub fn stalled(&self) -> bool {
        self.shared.stalled.load(Ordering::SeqCst)
    }

    /// How many times each blob was fetched.
    pub fn fetches(&self) -> HashMap<String, usize> {
        self.shared.fetches.lock().unwrap().clone()
    }

    pub fn token_requests(&self) -> Vec<String> {
        self.shared.token_requests.lock().unwrap().clone()
    }
}

impl Drop for FaultRegistry {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// The manifests of `layout/index.json` by tag, and every blob by digest.
fn find_manifest(layout: &Path, reference: &str) -> Option<(String, PathBuf)> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).ok()?).ok()?;
    for m in index["manifests"].as_array()? {
        let digest = m["digest"].as_str()?;
        let tag = m["annotations"]["org.opencontainers.image.ref.name"].as_str();
        if tag == Some(reference) || digest == reference {
            return Some((m["mediaType"].as_str()?.to_string(), blob(layout, digest)));
        }
    }
    // A platform manifest of an index, by digest.
    let path = blob(layout, reference);
    let body: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    Some((body["mediaType"].as_str()?.to_string(), path))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap_or(digest))
}

fn serve(stream: TcpStream, layout: &Path, s: &Shared, auth: Auth, port: u16) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut authorization = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("authorization")
            {
                authorization = v.trim().to_string();
            }
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let respond = |out: &mut TcpStream, status: &str, headers: &str, body: &[u8]| {
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{headers}\r\n",
                body.len()
            );
            out.write_all(head.as_bytes())
                .and_then(|()| out.write_all(body))
        };
        if path.starts_with("/token") {
            s.token_requests.lock().unwrap().push(authorization);
            let body = format!("{{\"token\":\"{TOKEN}\"}}");
            let _ = respond(
                &mut out,
                "200 OK",
                "Content-Type: application/json\r\n",
                body.as_bytes(),
            );
            continue;
        }
        if auth == Auth::Bearer && authorization != format!("Bearer {TOKEN}") {
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fault\"\r\n"
            );
            let _ = respond(&mut out, "401 Unauthorized", &challenge, b"{}");
            continue;
        }
        let parts: Vec<&str> = path.trim_start_matches("/v2/").split('/').collect();
        let result = match parts.as_slice() {
            [""] => respond(&mut out, "200 OK", "", b"{}"),
            // berth/<fixture>:<any tag> is the fixture's manifest.
            [.., fixture, "manifests", reference] => match find_manifest(
                layout,
                if reference.starts_with("sha256:") {
                    reference
                } else {
                    fixture
                },
            ) {
                Some((media_type, file)) => respond(
                    &mut out,
                    "200 OK",
                    &format!("Content-Type: {media_type}\r\n"),
                    &std::fs::read(file).unwrap(),
                ),
                None => respond(&mut out, "404 Not Found", "", b"{}"),
            },
            [.., "blobs", digest] => {
                *s.fetches
                    .lock()
                    .unwrap()
                    .entry(digest.to_string())
                    .or_default() += 1;
                let Ok(bytes) = std::fs::read(blob(layout, digest)) else {
                    let _ = respond(&mut out, "404 Not Found", "", b"{}");
                    continue;
                };
                let stall = {
                    let mut once = s.stall_once.lock().unwrap();
                    let hit = once.as_deref() == Some(*digest);
                    if hit {
                        *once = None;
                    }
                    hit
                };
                if stall {
                    let head =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", bytes.len());
                    let _ = out.write_all(head.as_bytes());
                    let _ = out.write_all(&bytes[..bytes.len() / 2]);
                    let _ = out.flush();
                    s.stalled.store(true, Ordering::SeqCst);
                    while !s.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    return;
                }
                respond(&mut out, "200 OK", "", &bytes)
            }
            _ => respond(&mut out, "404 Not Found", "", b"{}"),
        };
        if result.is_err() {
            return;
        }
    }
}
