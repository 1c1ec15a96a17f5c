//! A real OCI registry for the tests: Debian's `docker-registry` on
//! 127.0.0.1, on a free port, with its storage in a temp dir, holding the
//! fixture images `hack/fixtures.sh` builds. Stopped (and its storage
//! removed) on drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Every tag `hack/fixtures.sh` builds (without `--big`).
pub const FIXTURES: &[&str] = &[
    "layered",
    "layered-plus",
    "multiarch",
    "zstd",
    "evil-dotdot",
    "evil-symlink",
    "evil-hardlink",
];

pub const USER: &str = "berth";
pub const PASSWORD: &str = "s3cret-pw";

/// The OCI layout with the fixture images, built once per test process and
/// cached under `<target>/berth-fixtures/<hash of the script>` across runs.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_fixtures(false))
}

/// [`fixtures`] plus the `big` image for benchmarks (slow to build; cached likewise).
pub fn big_fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| build_fixtures(true))
}

fn build_fixtures(big: bool) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let script = workspace.join("hack/fixtures.sh");
    let text = std::fs::read(&script).expect("read hack/fixtures.sh");
    let key = fnv1a(&text);
    let target = crate::bin_dir().parent().unwrap().to_path_buf();
    let suffix = if big { "-big" } else { "" };
    let dir = target
        .join("berth-fixtures")
        .join(format!("{key:016x}{suffix}"));
    let layout = dir.join("oci");
    if layout.join("index.json").exists() {
        return layout;
    }
    // Build beside and rename, so parallel test processes never see half a layout.
    let tmp = target
        .join("berth-fixtures")
        .join(format!(".tmp-{}{suffix}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let status = Command::new("bash")
        .arg(&script)
        .arg(&tmp)
        .args(big.then_some("--big"))
        .stdout(Stdio::null())
        .status()
        .expect("run hack/fixtures.sh");
    assert!(status.success(), "hack/fixtures.sh failed");
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another process won the race; its layout is the same.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    layout
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// Whether this machine has what a registry test needs.
pub fn available() -> bool {
    [
        "docker-registry",
        "skopeo",
        "jq",
        "zstd",
        "openssl",
        "htpasswd",
    ]
    .iter()
    .all(|c| crate::have_command(c))
}

/// How the registry is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain HTTP, anonymous.
    Plain,
    /// HTTPS with a self-signed certificate and htpasswd (bcrypt) basic auth.
    TlsAuth,
}

pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    security: Security,
}

impl Registry {
    /// Starts a registry and pushes every fixture as `<host>/berth/<tag>:latest`.
    pub fn start(security: Security) -> Registry {
        let registry = Self::start_empty(security);
        for tag in FIXTURES {
            registry.push(tag, &format!("berth/{tag}:latest"));
        }
        registry
    }

    pub fn start_empty(security: Security) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("storage").display()
        );
        if security == Security::TlsAuth {
            let cert = dir.path().join("cert.pem");
            let key = dir.path().join("key.pem");
            run(Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                    "-keyout",
                ])
                .arg(&key)
                .arg("-out")
                .arg(&cert));
            let htpasswd = dir.path().join("htpasswd");
            run(Command::new("htpasswd")
                .args(["-Bbc"])
                .arg(&htpasswd)
                .args([USER, PASSWORD]));
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                cert.display(),
                key.display(),
                htpasswd.display()
            ));
        }
        let config_file = dir.path().join("config.yml");
        std::fs::write(&config_file, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry {
            child,
            dir,
            port,
            security,
        }
    }

    /// `127.0.0.1:<port>`: the registry part of image names.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `<host>/berth/<fixture>:latest`.
    pub fn image(&self, fixture: &str) -> String {
        format!("{}/berth/{fixture}:latest", self.host())
    }

    /// Pushes fixture `tag` as `<host>/<name>`.
    pub fn push(&self, tag: &str, name: &str) {
        self.push_from(fixtures(), tag, name);
    }

    /// Pushes `tag` of the OCI layout `layout` as `<host>/<name>`.
    pub fn push_from(&self, layout: &Path, tag: &str, name: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        if self.security == Security::TlsAuth {
            cmd.arg(format!("--dest-creds={USER}:{PASSWORD}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}", self.host()));
        run(&mut cmd);
    }

    /// Where the registry keeps blob `hex` (to corrupt it in a test).
    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's storage dir (to warm the page cache before a benchmark).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- registry log ----\n{}", self.log());
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A registries.conf (v2) that reaches `host` over plain HTTP.
pub fn insecure_conf(host: &str) -> String {
    format!("[[registry]]\nlocation = \"{host}\"\ninsecure = true\n")
}

/// The digest of layer `n` of fixture `tag`, read from the fixture layout.
pub fn fixture_layer(tag: &str, n: usize) -> String {
    let (_, manifest) = fixture_manifest(tag);
    manifest["layers"][n]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The digest of fixture `tag`'s config.
pub fn fixture_config(tag: &str) -> String {
    let (_, manifest) = fixture_manifest(tag);
    manifest["config"]["digest"].as_str().unwrap().to_string()
}

/// Fixture `tag`'s manifest digest and content, read from the fixture layout.
pub fn fixture_manifest(tag: &str) -> (String, serde_json::Value) {
    let layout = fixtures();
    let read = |digest: &str| -> serde_json::Value {
        let hex = digest.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap())
            .unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let digest = entry["digest"].as_str().unwrap();
    (digest.to_string(), read(digest))
}

/// The hex SHA-256 of `bytes`, by Debian's `sha256sum` (the e2e crate
/// carries no hash crate of its own).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(bytes)
        .expect("feed sha256sum");
    let out = child.wait_with_output().expect("sha256sum output");
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}
