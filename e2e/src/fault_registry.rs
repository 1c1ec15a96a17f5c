//! A minimal Distribution API server over an OCI layout, for fault
//! injection only: it answers chosen fetches of a manifest or blob with a
//! fault (5xx, a connection dropped mid-body, a short body, a stall, a slow
//! drip), counts fetches (to prove retries and that shared layers are
//! fetched once), notices a client that gives up on a stalled fetch, and can
//! demand Bearer tokens from its own token endpoint (Debian has no token
//! server to pair with docker-registry). Everything else is tested against
//! the real registry in [`crate::registry`].

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How one fetch of a manifest or blob goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `500 Internal Server Error`.
    ServerError,
    /// `404 Not Found`: a mirror that lacks the image.
    NotFound,
    /// Half the body, then the connection is closed.
    DropMidBody,
    /// The whole body under a Content-Length that promises more, then close.
    ShortBody,
    /// Half the body, then nothing until the client closes the connection
    /// (or the registry is dropped).
    Stall,
    /// The body in eight pieces with this pause before each: slow, but
    /// never silent for that long.
    Drip(Duration),
}

#[derive(Default)]
struct Shared {
    /// By digest (`sha256:…`): the faults for its next fetches, in order.
    faults: Mutex<HashMap<String, VecDeque<Fault>>>,
    stalled: AtomicBool,
    /// A client closed its connection during a stall.
    abandoned: AtomicBool,
    fetches: Mutex<HashMap<String, usize>>,
    /// Token requests seen: the Authorization header each carried.
    token_requests: Mutex<Vec<String>>,
    /// Every request's Authorization header, empty when it had none.
    authorizations: Mutex<Vec<String>>,
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

    /// Answers the next fetches of `digest` (a manifest or a blob) with
    /// `faults`, one each, in order; later fetches succeed.
    pub fn inject(&self, digest: &str, faults: &[Fault]) {
        self.shared
            .faults
            .lock()
            .unwrap()
            .entry(digest.to_string())
            .or_default()
            .extend(faults);
    }

    /// Stalls the next fetch of `digest` after half its bytes.
    pub fn stall_once(&self, digest: &str) {
        self.inject(digest, &[Fault::Stall]);
    }

    /// Whether a fetch has stalled.
    pub fn stalled(&self) -> bool {
        self.shared.stalled.load(Ordering::SeqCst)
    }

    /// Whether a client closed the connection of a stalled fetch.
    pub fn abandoned(&self) -> bool {
        self.shared.abandoned.load(Ordering::SeqCst)
    }

    /// How many times each manifest (by digest) and blob was fetched.
    pub fn fetches(&self) -> HashMap<String, usize> {
        self.shared.fetches.lock().unwrap().clone()
    }

    pub fn token_requests(&self) -> Vec<String> {
        self.shared.token_requests.lock().unwrap().clone()
    }

    /// The Authorization header of every request so far, token requests included.
    pub fn authorizations(&self) -> Vec<String> {
        self.shared.authorizations.lock().unwrap().clone()
    }
}

impl Drop for FaultRegistry {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// The manifest a tag or digest names: its media type and file (named by
/// its digest's hex).
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
        s.authorizations.lock().unwrap().push(authorization.clone());
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
        let (file, headers) = match parts.as_slice() {
            [""] => {
                if respond(&mut out, "200 OK", "", b"{}").is_err() {
                    return;
                }
                continue;
            }
            // berth/<fixture>:<any tag> is the fixture's manifest.
            [.., fixture, "manifests", reference] => {
                let wanted = if reference.starts_with("sha256:") {
                    reference
                } else {
                    fixture
                };
                match find_manifest(layout, wanted) {
                    Some((media_type, file)) => (file, format!("Content-Type: {media_type}\r\n")),
                    None => (PathBuf::new(), String::new()),
                }
            }
            [.., "blobs", digest] => (blob(layout, digest), String::new()),
            _ => (PathBuf::new(), String::new()),
        };
        let Ok(bytes) = std::fs::read(&file) else {
            if respond(&mut out, "404 Not Found", "", b"{}").is_err() {
                return;
            }
            continue;
        };
        let digest = format!(
            "sha256:{}",
            file.file_name().unwrap_or_default().to_string_lossy()
        );
        *s.fetches.lock().unwrap().entry(digest.clone()).or_default() += 1;
        let fault = s
            .faults
            .lock()
            .unwrap()
            .get_mut(&digest)
            .and_then(VecDeque::pop_front);
        let head =
            |length: usize| format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n{headers}\r\n");
        let half = &bytes[..bytes.len() / 2];
        let result = match fault {
            None => respond(&mut out, "200 OK", &headers, &bytes),
            Some(Fault::ServerError) => respond(&mut out, "500 Internal Server Error", "", b"{}"),
            Some(Fault::NotFound) => respond(&mut out, "404 Not Found", "", b"{}"),
            Some(Fault::DropMidBody) => {
                let _ = out
                    .write_all(head(bytes.len()).as_bytes())
                    .and_then(|()| out.write_all(half));
                return;
            }
            Some(Fault::ShortBody) => {
                let _ = out
                    .write_all(head(bytes.len() + 100).as_bytes())
                    .and_then(|()| out.write_all(&bytes));
                return;
            }
            Some(Fault::Stall) => {
                let _ = out
                    .write_all(head(bytes.len()).as_bytes())
                    .and_then(|()| out.write_all(half))
                    .and_then(|()| out.flush());
                s.stalled.store(true, Ordering::SeqCst);
                wait_for_close(&mut reader, s);
                return;
            }
            Some(Fault::Drip(pause)) => {
                let piece = bytes.len().div_ceil(8).max(1);
                out.write_all(head(bytes.len()).as_bytes()).and_then(|()| {
                    bytes.chunks(piece).try_for_each(|chunk| {
                        std::thread::sleep(pause);
                        out.write_all(chunk).and_then(|()| out.flush())
                    })
                })
            }
        };
        if result.is_err() {
            return;
        }
    }
}

/// Blocks until the client closes the connection (recorded as abandoned)
/// or the registry is dropped.
fn wait_for_close(reader: &mut BufReader<TcpStream>, s: &Shared) {
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(20)));
    let mut byte = [0u8; 1];
    while !s.stop.load(Ordering::SeqCst) {
        match reader.read(&mut byte) {
            Ok(0) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            _ => break,
        }
    }
    if !s.stop.load(Ordering::SeqCst) {
        s.abandoned.store(true, Ordering::SeqCst);
    }
}
