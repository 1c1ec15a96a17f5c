//! The streaming RPCs: PortForward, Exec and Attach answer with a
//! single-use URL on berthd's streaming server (crate `berth-streaming`);
//! the client then upgrades an HTTP connection there to SPDY/3.1 or
//! WebSocket.
//!
//! Requests are checked as the kubelet's streaming server (which CRI-O
//! uses) checks them, and the target is resolved now, so an unknown pod or
//! bad input fails the RPC instead of the later connection.

use std::sync::Arc;
use std::time::Duration;

use berth_proto::cri::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest,
    PortForwardResponse,
};
use berth_sandbox::State;
use berth_streaming::{Container, RuntimeBackend, StreamingServer, TlsFiles};
use tonic::Status;

use super::CriService;
use crate::config::StreamingSettings;

/// Binds the streaming server as configured; must run inside the tokio
/// runtime.
pub async fn start_server(settings: &StreamingSettings) -> std::io::Result<StreamingServer> {
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        // The config check refuses one without the other.
        _ => None,
    };
    let config = berth_streaming::Config {
        addr: (settings.address, settings.port).into(),
        idle_timeout: Duration::from_secs(settings.idle_timeout),
        tls,
        ..berth_streaming::Config::default()
    };
    StreamingServer::start(config, Arc::new(RuntimeBackend)).await
}

/// A streaming request that passed [`check_exec`] or [`check_attach`].
#[derive(Debug)]
pub(super) struct Checked<T>(T);

impl Checked<ExecRequest> {
    pub(super) fn container_id(&self) -> &str {
        &self.0.container_id
    }
}

impl Checked<AttachRequest> {
    pub(super) fn container_id(&self) -> &str {
        &self.0.container_id
    }
}

/// Exec's checks, made before the container is looked up. A tty merges
/// stderr into stdout, so asking for both is an error.
pub(super) fn check_exec(request: ExecRequest) -> Result<Checked<ExecRequest>, Status> {
    let streams = [request.stdin, request.stdout, request.stderr];
    check_streams(&request.container_id, request.tty, streams, "or")?;
    // The kubelet's server lets this through to fail in the runtime; an
    // empty command can never run, so it is refused here.
    if request.cmd.first().is_none_or(String::is_empty) {
        return Err(Status::invalid_argument(
            "cmd: must name the command to run",
        ));
    }
    super::container::check_cmd_bytes(&request.cmd)?;
    Ok(Checked(request))
}

/// Attach's checks, made before the container is looked up.
pub(super) fn check_attach(request: AttachRequest) -> Result<Checked<AttachRequest>, Status> {
    let streams = [request.stdin, request.stdout, request.stderr];
    check_streams(&request.container_id, request.tty, streams, "and")?;
    Ok(Checked(request))
}

/// What Exec and Attach both check; `conjunction` words the last message
/// as the kubelet's streaming server does for each ("or" and "and").
fn check_streams(
    container_id: &str,
    tty: bool,
    [stdin, stdout, stderr]: [bool; 3],
    conjunction: &str,
) -> Result<(), Status> {
    if container_id.is_empty() {
        return Err(Status::invalid_argument("missing required container_id"));
    }
    if tty && stderr {
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be true",
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(Status::invalid_argument(format!(
            "one of stdin, stdout, {conjunction} stderr must be set"
        )));
    }
    Ok(())
}

/// The Exec answer for `container`, which the caller resolved from
/// [`Checked::container_id`] and found created or running (as CRI-O
/// requires).
pub(super) fn exec_url(
    server: &StreamingServer,
    container: Container,
    request: Checked<ExecRequest>,
) -> ExecResponse {
    let request = request.0;
    let url = server.exec_url(berth_streaming::ExecRequest {
        container,
        cmd: request.cmd,
        tty: request.tty,
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
    });
    ExecResponse { url }
}

/// The Attach answer for `container`, resolved from
/// [`Checked::container_id`] and found running; `container_tty` says
/// whether it has a terminal (only then do resize events go to it).
pub(super) fn attach_url(
    server: &StreamingServer,
    container: Container,
    container_tty: bool,
    request: Checked<AttachRequest>,
) -> AttachResponse {
    let request = request.0;
    let url = server.attach_url(berth_streaming::AttachRequest {
        container,
        tty: request.tty && container_tty,
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
    });
    AttachResponse { url }
}

fn streaming_container(running: berth_runtime::containers::Running) -> Container {
    Container {
        id: running.id,
        runtime: running.runtime,
        run_dir: running.run_dir,
    }
}

/// The CRI ports as TCP ports; 0 and anything above 65535 are refused.
fn ports(ports: &[i32]) -> Result<Vec<u16>, Status> {
    ports
        .iter()
        .map(|&port| {
            u16::try_from(port).ok().filter(|p| *p != 0).ok_or_else(|| {
                Status::invalid_argument(format!("port: {port} is not a TCP port number (1-65535)"))
            })
        })
        .collect()
}

impl CriService {
    pub(super) async fn exec(&self, request: ExecRequest) -> Result<ExecResponse, Status> {
        let request = check_exec(request)?;
        let running = self.running_container(request.container_id())?;
        Ok(exec_url(
            &self.streaming,
            streaming_container(running),
            request,
        ))
    }

    pub(super) async fn attach(&self, request: AttachRequest) -> Result<AttachResponse, Status> {
        let request = check_attach(request)?;
        let running = self.running_container(request.container_id())?;
        let tty = running.tty;
        Ok(attach_url(
            &self.streaming,
            streaming_container(running),
            tty,
            request,
        ))
    }

    pub(super) async fn port_forward(
        &self,
        request: PortForwardRequest,
    ) -> Result<PortForwardResponse, Status> {
        if request.pod_sandbox_id.is_empty() {
            return Err(Status::invalid_argument("missing required pod_sandbox_id"));
        }
        let ports = ports(&request.port)?;
        let pod = self
            .pods
            .get(&request.pod_sandbox_id)
            .await
            .map_err(super::pod::status)?;
        if pod.effective_state() != State::Ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not running",
                pod.id
            )));
        }
        let url = self
            .streaming
            .port_forward_url(berth_streaming::PortForwardRequest {
                pod_id: pod.id.to_string(),
                // None: the pod is on the host's network.
                netns: pod.namespaces.net.clone(),
                ports,
            });
        Ok(PortForwardResponse { url })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_request() -> ExecRequest {
        ExecRequest {
            container_id: "c0ffee".into(),
            cmd: vec!["sh".into()],
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        }
    }

    fn attach_request() -> AttachRequest {
        AttachRequest {
            container_id: "c0ffee".into(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        }
    }

    fn refused<T: std::fmt::Debug>(result: Result<T, Status>, words: &str) {
        let err = result.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(words), "{err:?}");
    }

    #[test]
    fn exec_requests_are_checked_naming_the_field() {
        assert_eq!(check_exec(exec_request()).unwrap().container_id(), "c0ffee");
        refused(
            check_exec(ExecRequest {
                container_id: String::new(),
                ..exec_request()
            }),
            "container_id",
        );
        refused(
            check_exec(ExecRequest {
                tty: true,
                ..exec_request()
            }),
            "tty and stderr",
        );
        refused(
            check_exec(ExecRequest {
                stdin: false,
                stdout: false,
                stderr: false,
                ..exec_request()
            }),
            "one of stdin, stdout, or stderr",
        );
        for cmd in [vec![], vec![String::new()]] {
            refused(
                check_exec(ExecRequest {
                    cmd,
                    ..exec_request()
                }),
                "cmd",
            );
        }
        refused(
            check_exec(ExecRequest {
                cmd: vec!["sh".into(), "-c\0true".into()],
                ..exec_request()
            }),
            "cmd[1]",
        );
        // A tty with stdout only, or stdin only, is fine.
        check_exec(ExecRequest {
            tty: true,
            stderr: false,
            ..exec_request()
        })
        .unwrap();
        check_exec(ExecRequest {
            stdout: false,
            stderr: false,
            ..exec_request()
        })
        .unwrap();
    }

    #[test]
    fn attach_requests_are_checked_naming_the_field() {
        assert_eq!(
            check_attach(attach_request()).unwrap().container_id(),
            "c0ffee"
        );
        refused(
            check_attach(AttachRequest {
                container_id: String::new(),
                ..attach_request()
            }),
            "container_id",
        );
        refused(
            check_attach(AttachRequest {
                tty: true,
                ..attach_request()
            }),
            "tty and stderr",
        );
        refused(
            check_attach(AttachRequest {
                stdin: false,
                stdout: false,
                stderr: false,
                ..attach_request()
            }),
            "one of stdin, stdout, and stderr",
        );
        check_attach(AttachRequest {
            stdin: false,
            stderr: false,
            ..attach_request()
        })
        .unwrap();
    }

    #[test]
    fn ports_must_be_tcp_port_numbers() {
        assert_eq!(ports(&[80, 65535]).unwrap(), [80, 65535]);
        assert!(ports(&[]).unwrap().is_empty());
        for bad in [0, -1, 65536] {
            refused(ports(&[80, bad]), &format!("port: {bad} "));
        }
    }

    fn container() -> Container {
        Container {
            id: "c0ffee".into(),
            runtime: berth_runtime::oci::OciRuntime {
                path: "runc".into(),
                root: "/run/berth/runtimes/runc".into(),
                shim: "berth-shim".into(),
                cgroup_driver: Default::default(),
            },
            run_dir: "/run/berth/containers/c0ffee".into(),
        }
    }

    #[tokio::test]
    async fn urls_point_at_the_server_with_a_fresh_token_each() {
        let server = start_server(&StreamingSettings::default()).await.unwrap();
        let base = format!("http://{}/", server.local_addr());
        assert!(server.local_addr().ip().is_loopback());
        let exec = |tty| {
            let request = check_exec(ExecRequest {
                tty,
                stderr: !tty,
                ..exec_request()
            })
            .unwrap();
            exec_url(&server, container(), request).url
        };
        let (a, b) = (exec(false), exec(true));
        assert!(a.starts_with(&format!("{base}exec/")), "{a}");
        assert_ne!(a, b);
        let attach = attach_url(
            &server,
            container(),
            true,
            check_attach(attach_request()).unwrap(),
        )
        .url;
        assert!(attach.starts_with(&format!("{base}attach/")), "{attach}");
        // The token is unguessable: at least 128 random bits.
        let token = attach.rsplit('/').next().unwrap();
        assert!(token.len() >= 22, "{token}");
    }
}
