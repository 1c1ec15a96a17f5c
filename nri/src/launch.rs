//! Pre-installed plugins: `NN-name` executables in the plugin dir, started
//! at boot with one end of a socketpair as fd 3, as the reference starts
//! them (NRI_PLUGIN_NAME, NRI_PLUGIN_IDX, NRI_PLUGIN_SOCKET=3).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixStream;

pub(crate) struct Installed {
    pub path: PathBuf,
    pub idx: String,
    pub base: String,
}

pub(crate) struct Launched {
    pub idx: String,
    pub base: String,
    pub config: String,
    pub child: tokio::process::Child,
}

/// The executables named `NN-name` in `dir`, in name order.
pub(crate) fn installed(dir: &Path) -> Vec<Installed> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<Installed> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let (idx, base) = name.split_once('-')?;
            let meta = entry.metadata().ok()?;
            let executable = meta.is_file() && meta.permissions().mode() & 0o111 != 0;
            let valid =
                idx.len() == 2 && idx.bytes().all(|b| b.is_ascii_digit()) && !base.is_empty();
            if !(valid && executable) {
                tracing::warn!(path = %entry.path().display(), "NRI plugin dir: not an NN-name executable, skipped");
                return None;
            }
            // berthd runs it as root: anyone who could replace it would be root.
            if meta.uid() != 0 || meta.permissions().mode() & 0o022 != 0 {
                tracing::warn!(path = %entry.path().display(), "NRI plugin dir: not owned by root or writable by others, skipped");
                return None;
            }
            Some(Installed {
                path: entry.path(),
                idx: idx.to_string(),
                base: base.to_string(),
            })
        })
        .collect();
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// `NN-name.conf`, else `name.conf`, else no configuration.
fn config(dir: &Path, idx: &str, base: &str) -> std::io::Result<String> {
    for file in [format!("{idx}-{base}.conf"), format!("{base}.conf")] {
        match std::fs::read_to_string(dir.join(&file)) {
            Ok(text) => return Ok(text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(String::new())
}

pub(crate) fn start(
    plugin: &Installed,
    config_dir: &Path,
) -> std::io::Result<(UnixStream, Launched)> {
    let config = config(config_dir, &plugin.idx, &plugin.base)?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let theirs = OwnedFd::from(theirs);
    let fd = theirs.as_raw_fd();
    let mut command = tokio::process::Command::new(&plugin.path);
    command
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("NRI_PLUGIN_NAME", &plugin.base)
        .env("NRI_PLUGIN_IDX", &plugin.idx)
        .env("NRI_PLUGIN_SOCKET", "3")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // SAFETY: between fork and exec only async-signal-safe calls: dup2, fcntl.
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)?;
                let flags =
                    nix::fcntl::FdFlag::from_bits_truncate(flags) - nix::fcntl::FdFlag::FD_CLOEXEC;
                nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(flags))?;
            } else {
                nix::unistd::dup2(fd, 3)?;
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(theirs);
    ours.set_nonblocking(true)?;
    let stream = UnixStream::from_std(ours)?;
    Ok((
        stream,
        Launched {
            idx: plugin.idx.clone(),
            base: plugin.base.clone(),
            config,
            child,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_owned_nn_name_executables_are_plugins() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("10-good", 0o755);
        write("05-also", 0o700);
        write("not-indexed", 0o755);
        write("1-short", 0o755);
        write("20-noexec", 0o644);
        write("30-writable", 0o777);
        let found: Vec<String> = installed(dir.path())
            .iter()
            .map(|p| format!("{}-{}", p.idx, p.base))
            .collect();
        if nix::unistd::geteuid().is_root() {
            assert_eq!(found, ["05-also", "10-good"]);
        } else {
            // Files a test user makes are not root's: none qualifies.
            assert!(found.is_empty(), "{found:?}");
        }
    }
}
