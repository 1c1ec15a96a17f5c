//! The CRI socket: one berthd per socket and per state root, enforced with
//! advisory locks so a crashed daemon never blocks its successor.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open lock file {path}: {source}")]
    LockFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another berthd is already using {what} {path} (lock {lock} is held)")]
    AlreadyRunning {
        what: &'static str,
        path: PathBuf,
        lock: PathBuf,
    },
    #[error("something is already listening on {path}; refusing to replace its socket")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot remove stale socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An exclusive lock held for the daemon's lifetime; released by the kernel
/// when the process exits, however it exits.
pub struct Lock(#[allow(dead_code)] Flock<File>);

/// Takes `lock_path` exclusively without waiting; `what` and `guarded` name
/// the resource it protects in the error.
pub fn lock(lock_path: &Path, what: &'static str, guarded: &Path) -> Result<Lock, ListenError> {
    create_parent(lock_path)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .map_err(|source| ListenError::LockFile {
            path: lock_path.to_path_buf(),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map(Lock)
        .map_err(|_| ListenError::AlreadyRunning {
            what,
            path: guarded.to_path_buf(),
            lock: lock_path.to_path_buf(),
        })
}

/// Binds the CRI socket at `path` with mode 0660, replacing a stale socket
/// only when nothing accepts connections on it.
pub fn bind(path: &Path) -> Result<UnixListener, ListenError> {
    create_parent(path)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ListenError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(|source| ListenError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(ListenError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ListenError::Bind {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    let bind_err = |source| ListenError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    Ok(listener)
}

fn create_parent(path: &Path) -> Result<(), ListenError> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    std::fs::create_dir_all(parent).map_err(|source| ListenError::CreateDir {
        path: parent.to_path_buf(),
        source,
    })
}
