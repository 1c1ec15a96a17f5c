//! Streaming for `kubectl exec`, `attach` and `port-forward` (CRI `Exec`,
//! `Attach`, `PortForward`): a SPDY/3.1 codec and session ([`spdy`]), the
//! Kubernetes stream protocols over SPDY and WebSocket (and SPDY tunnelled
//! in WebSocket, client-go's port-forward), the HTTP server
//! handing out single-use URLs ([`server`]), and the backend that runs the
//! sessions against the OCI runtime and berth-shim ([`backend`]).
//!
//! berthd owns one [`server::StreamingServer`]; its Exec/Attach/PortForward
//! RPCs look the container or pod up and return
//! [`server::StreamingServer::exec_url`] (and friends).

pub mod backend;
pub mod protocol;
mod pty;
pub mod server;
mod session;
pub mod spdy;
mod spdy_exec;
mod ws;
mod ws_tunnel;

pub use backend::{
    AttachRequest, Backend, BackendError, Container, ExecRequest, PortForwardRequest,
    RuntimeBackend,
};
pub use server::{Config, StreamingServer, TlsFiles};
