//! systemd service notification (`Type=notify` units): `READY=1` once the
//! CRI socket serves, `STOPPING=1` when shutdown begins. The protocol is one
//! datagram on the unix socket `$NOTIFY_SOCKET` names (a path, or an
//! abstract name written with a leading `@`), so no crate is needed.
//!
//! The variable is berthd's alone: [`take_socket`] removes it from the
//! environment at start. Inherited, it makes runc and crun proxy the
//! container's own notifications (runc then fails `start` binding a socket
//! path too long for the run root; crun waits for a READY=1 the container
//! never sends), and would let a shim or CNI plugin speak for berthd.

use std::ffi::{OsStr, OsString};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;

/// The socket's environment variable, as systemd sets it for the unit.
const ENV: &str = "NOTIFY_SOCKET";

static SOCKET: OnceLock<Option<OsString>> = OnceLock::new();

/// Keeps `$NOTIFY_SOCKET` for [`ready`] and [`stopping`] and removes it
/// from the environment, so no child inherits it.
///
/// # Safety
/// Must run while berthd has one thread (first thing in `main`): changing
/// the environment races with any other thread reading it.
pub unsafe fn take_socket() {
    let socket = std::env::var_os(ENV);
    if socket.is_some() {
        // SAFETY: single-threaded, as this function's contract requires.
        unsafe { std::env::remove_var(ENV) };
    }
    let _ = SOCKET.set(socket);
}

#[derive(Debug, thiserror::Error)]
#[error("cannot send {state:?} to the systemd notify socket {socket:?}: {source}")]
pub struct NotifyError {
    state: &'static str,
    socket: String,
    source: std::io::Error,
}

/// The service is up: the CRI socket accepts RPCs.
pub fn ready() -> Result<(), NotifyError> {
    send_env("READY=1")
}

/// The service is shutting down (systemd shows `deactivating`).
pub fn stopping() -> Result<(), NotifyError> {
    send_env("STOPPING=1")
}

/// Nothing to do when `$NOTIFY_SOCKET` was unset: no supervisor is waiting.
fn send_env(state: &'static str) -> Result<(), NotifyError> {
    match SOCKET.get() {
        Some(Some(socket)) => send(socket, state),
        _ => Ok(()),
    }
}

fn send(socket: &OsStr, state: &'static str) -> Result<(), NotifyError> {
    let err = |source| NotifyError {
        state,
        socket: socket.to_string_lossy().into_owned(),
        source,
    };
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(socket),
    }
    .map_err(err)?;
    let sender = UnixDatagram::unbound().map_err(err)?;
    sender.send_to_addr(state.as_bytes(), &addr).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(receiver: &UnixDatagram) -> String {
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn states_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        send(path.as_os_str(), "STOPPING=1").unwrap();
        assert_eq!(received(&receiver), "READY=1");
        assert_eq!(received(&receiver), "STOPPING=1");
    }

    #[test]
    fn states_reach_an_abstract_socket() {
        let name = format!("berth-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        send(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        assert_eq!(received(&receiver), "READY=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let err = send(path.as_os_str(), "READY=1").unwrap_err().to_string();
        assert!(err.contains("READY=1") && err.contains("absent"), "{err}");
    }
}
