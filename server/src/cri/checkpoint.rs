//! CheckpointContainer. Checkpointing needs a working CRIU; the answer names
//! what this host lacks, checked once with `criu check`.

use std::process::Command;
use std::sync::OnceLock;

use berth_proto::cri::{CheckpointContainerRequest, CheckpointContainerResponse};
use tonic::Status;

use super::CriService;

impl CriService {
    pub(super) async fn checkpoint_container(
        &self,
        request: CheckpointContainerRequest,
    ) -> Result<CheckpointContainerResponse, Status> {
        if request.container_id.is_empty() {
            return Err(Status::invalid_argument(
                "container_id: must name the container to checkpoint",
            ));
        }
        self.running_container(&request.container_id)?;
        let missing = tokio::task::spawn_blocking(|| criu_missing().clone())
            .await
            .map_err(|err| Status::internal(format!("checking for CRIU: {err}")))?;
        Err(Status::unimplemented(format!(
            "CheckpointContainer of {}: {missing}",
            request.container_id
        )))
    }
}

/// What stops a checkpoint on this host, found once.
fn criu_missing() -> &'static String {
    static MISSING: OnceLock<String> = OnceLock::new();
    MISSING.get_or_init(|| match Command::new("criu").arg("check").output() {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            "needs CRIU, which is not installed (no `criu` in PATH; Debian package `criu`)".into()
        }
        Err(err) => format!("needs CRIU, which cannot be run: {err}"),
        Ok(out) if !out.status.success() => {
            let text = String::from_utf8_lossy(&out.stderr);
            let reason = text
                .lines()
                .rev()
                .find(|l| l.starts_with("Error"))
                .unwrap_or_else(|| text.trim());
            format!("needs CRIU, and `criu check` fails on this host: {reason}")
        }
        Ok(_) => "CRIU works on this host, but Berth does not checkpoint containers yet".into(),
    })
}
