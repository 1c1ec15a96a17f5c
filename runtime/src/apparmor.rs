//! AppArmor on the host: which profiles the kernel has loaded, and Berth's
//! own default profile, `berth-default`, which is loaded with
//! `apparmor_parser` the first time a container needs it and is missing
//! (also after someone unloaded it), as CRI-O does with `crio-default`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The profile RuntimeDefault (and no profile at all) gets.
pub const DEFAULT_PROFILE: &str = "berth-default";

/// Its text, shipped in the binary.
pub const DEFAULT_PROFILE_TEXT: &str = include_str!("apparmor/berth-default");

/// Where the kernel lists the loaded profiles, one `name (mode)` a line.
const PROFILES: &str = "/sys/kernel/security/apparmor/profiles";

/// What a container asks for, once the CRI's two forms are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    RuntimeDefault,
    Unconfined,
    /// A profile the node's administrator loaded, by name.
    Localhost(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppArmorError {
    #[error("AppArmor profile {name:?} is not loaded on this host (it is not in {list})")]
    NotLoaded { name: String, list: PathBuf },
    #[error("cannot read the loaded AppArmor profiles from {list}: {reason}")]
    List { list: PathBuf, reason: String },
    #[error("cannot load AppArmor profile {name:?} with {parser}: {reason}")]
    Load {
        name: String,
        parser: PathBuf,
        reason: String,
    },
}

/// An AppArmor-enabled host: where its profile list is and which parser
/// loads profiles into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppArmor {
    profiles: PathBuf,
    parser: PathBuf,
}

/// Serialises loads of the default profile, so concurrent creates run the
/// parser once.
static LOADING: Mutex<()> = Mutex::new(());

impl AppArmor {
    /// This host's AppArmor, `None` when it is not enabled.
    pub fn host() -> Option<AppArmor> {
        crate::features::apparmor_enabled()
            .then(|| AppArmor::with_paths(PROFILES, "apparmor_parser"))
    }

    /// An AppArmor whose profile list is the file `profiles` and whose
    /// parser is `parser` (a path, or a name looked up in `PATH`).
    pub fn with_paths(profiles: impl Into<PathBuf>, parser: impl Into<PathBuf>) -> AppArmor {
        AppArmor {
            profiles: profiles.into(),
            parser: parser.into(),
        }
    }

    /// The profile to put in the OCI spec (`process.apparmorProfile`) for
    /// `request`; `None` runs the container unconfined. RuntimeDefault
    /// loads [`DEFAULT_PROFILE`] if the kernel lacks it; a Localhost
    /// profile must be loaded already (berth-default by that name too is
    /// loaded on demand).
    pub fn profile_for(&self, request: &Request) -> Result<Option<String>, AppArmorError> {
        match request {
            Request::Unconfined => Ok(None),
            Request::RuntimeDefault => {
                self.ensure_default()?;
                Ok(Some(DEFAULT_PROFILE.to_string()))
            }
            Request::Localhost(name) if name == DEFAULT_PROFILE => {
                self.ensure_default()?;
                Ok(Some(name.clone()))
            }
            Request::Localhost(name) => {
                if self.is_loaded(name)? {
                    Ok(Some(name.clone()))
                } else {
                    Err(AppArmorError::NotLoaded {
                        name: name.clone(),
                        list: self.profiles.clone(),
                    })
                }
            }
        }
    }

    /// Whether the kernel has a profile called `name`, in any mode.
    pub fn is_loaded(&self, name: &str) -> Result<bool, AppArmorError> {
        let text = std::fs::read_to_string(&self.profiles).map_err(|err| AppArmorError::List {
            list: self.profiles.clone(),
            reason: err.to_string(),
        })?;
        Ok(loaded_names(&text).any(|loaded| loaded == name))
    }

    /// Loads [`DEFAULT_PROFILE`] unless the kernel has it.
    pub fn ensure_default(&self) -> Result<(), AppArmorError> {
        let _one_at_a_time = LOADING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.is_loaded(DEFAULT_PROFILE)? {
            return Ok(());
        }
        self.load(DEFAULT_PROFILE, DEFAULT_PROFILE_TEXT)?;
        tracing::info!(
            profile = DEFAULT_PROFILE,
            "loaded the default AppArmor profile"
        );
        Ok(())
    }

    /// `apparmor_parser -Kr` with `text` on stdin: replace (or add) the
    /// profile, without reading or writing the parser's cache, whose
    /// entries a stale berth-default could otherwise come back from.
    fn load(&self, name: &str, text: &str) -> Result<(), AppArmorError> {
        let failed = |reason: String| AppArmorError::Load {
            name: name.to_string(),
            parser: self.parser.clone(),
            reason,
        };
        let mut child = Command::new(&self.parser)
            .arg("-Kr")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| failed(err.to_string()))?;
        let written = child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(text.as_bytes());
        let output = child
            .wait_with_output()
            .map_err(|err| failed(err.to_string()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(failed(format!("{}: {}", output.status, stderr.trim())));
        }
        written.map_err(|err| failed(format!("writing the profile: {err}")))?;
        if !self.is_loaded(name)? {
            return Err(failed(format!(
                "the parser succeeded but {} does not list it",
                self.profiles.display()
            )));
        }
        Ok(())
    }
}

/// The names in the kernel's profile list: `name (enforce)`, `name
/// (complain)`, ...; a name may itself contain spaces.
fn loaded_names(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter_map(|line| line.rsplit_once(" (").map(|(name, _)| name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A profile list and a fake `apparmor_parser` that records its
    /// arguments and stdin and "loads" the profile by listing it, or fails
    /// with `fail` on stderr.
    fn fake_host(fail: Option<&str>) -> (tempfile::TempDir, AppArmor) {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("profiles");
        std::fs::write(
            &list,
            "/usr/bin/man (enforce)\nnvidia modprobe (complain)\n",
        )
        .unwrap();
        let parser = dir.path().join("apparmor_parser");
        let body = match fail {
            Some(message) => format!("echo '{message}' >&2; exit 1"),
            None => format!("echo 'berth-default (enforce)' >> {}", list.display()),
        };
        let script = format!(
            "#!/bin/sh\necho \"$@\" >> {args}\ncat > {stdin}\n{body}\n",
            args = dir.path().join("args").display(),
            stdin = dir.path().join("stdin").display(),
        );
        // Written beside and renamed: a test thread forking meanwhile must
        // not inherit a descriptor open for writing (ETXTBSY at exec).
        let tmp = dir.path().join("parser.tmp");
        std::fs::write(&tmp, script).unwrap();
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::rename(&tmp, &parser).unwrap();
        (dir, AppArmor::with_paths(list, parser))
    }

    #[test]
    fn names_are_read_from_the_kernel_list() {
        let text = "/usr/bin/man (enforce)\nnvidia modprobe (complain)\nx (kill)\n";
        let names: Vec<&str> = loaded_names(text).collect();
        assert_eq!(names, ["/usr/bin/man", "nvidia modprobe", "x"]);
    }

    #[test]
    fn runtime_default_loads_berth_default_once() {
        let (dir, host) = fake_host(None);
        for _ in 0..3 {
            assert_eq!(
                host.profile_for(&Request::RuntimeDefault),
                Ok(Some(DEFAULT_PROFILE.to_string()))
            );
        }
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        assert_eq!(args, "-Kr\n", "the parser runs once, with -Kr");
        let stdin = std::fs::read_to_string(dir.path().join("stdin")).unwrap();
        assert_eq!(stdin, DEFAULT_PROFILE_TEXT);
        assert!(stdin.contains("profile berth-default flags="));
        // Asked for by name, it is loaded (and not twice) as well.
        assert_eq!(
            host.profile_for(&Request::Localhost(DEFAULT_PROFILE.into())),
            Ok(Some(DEFAULT_PROFILE.to_string()))
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("args")).unwrap(),
            "-Kr\n"
        );
    }

    #[test]
    fn localhost_profiles_must_be_loaded() {
        let (dir, host) = fake_host(None);
        assert_eq!(
            host.profile_for(&Request::Localhost("nvidia modprobe".into())),
            Ok(Some("nvidia modprobe".to_string()))
        );
        let err = host
            .profile_for(&Request::Localhost("no-such-profile".into()))
            .unwrap_err();
        assert!(matches!(err, AppArmorError::NotLoaded { .. }));
        let message = err.to_string();
        assert!(
            message.contains("\"no-such-profile\"") && message.contains("profiles"),
            "{message}"
        );
        // A missing Localhost profile is never loaded by berthd.
        assert!(!dir.path().join("args").exists());
        assert_eq!(host.profile_for(&Request::Unconfined), Ok(None));
    }

    #[test]
    fn a_failing_parser_is_a_clear_error() {
        let (_dir, host) = fake_host(Some("syntax error in line 3"));
        let err = host.profile_for(&Request::RuntimeDefault).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("berth-default")
                && message.contains("apparmor_parser")
                && message.contains("syntax error in line 3"),
            "{message}"
        );
        let missing = AppArmor::with_paths(&host.profiles, "/no/such/apparmor_parser");
        let message = missing.ensure_default().unwrap_err().to_string();
        assert!(message.contains("/no/such/apparmor_parser"), "{message}");
        let no_list = AppArmor::with_paths("/no/such/profiles", "apparmor_parser");
        let message = no_list.is_loaded("x").unwrap_err().to_string();
        assert!(message.contains("/no/such/profiles"), "{message}");
    }
}
