//! The pod and container IDs an RPC names, recorded on its span (made by
//! `rpc_trace`), so that every log record of the call carries them, in the
//! text and the JSON format alike.

use berth_proto::cri::*;

/// The IDs a request names; none by default.
pub trait NamesIds {
    fn pod_id(&self) -> &str {
        ""
    }
    fn container_id(&self) -> &str {
        ""
    }
}

/// Records `request`'s IDs on the current span.
pub fn record(request: &impl NamesIds) {
    record_ids(request.pod_id(), request.container_id());
}

/// Records IDs learnt during the call (the pod a RunPodSandbox made, the
/// container a CreateContainer made); empty ones are left out.
pub fn record_ids(pod_id: &str, container_id: &str) {
    let span = tracing::Span::current();
    if !pod_id.is_empty() {
        span.record("pod_id", pod_id);
    }
    if !container_id.is_empty() {
        span.record("container_id", container_id);
    }
}

macro_rules! names_ids {
    (pod: $($pod:ty),*; container: $($ctr:ty),*; none: $($none:ty),* $(,)?) => {
        $(impl NamesIds for $pod {
            fn pod_id(&self) -> &str {
                &self.pod_sandbox_id
            }
        })*
        $(impl NamesIds for $ctr {
            fn container_id(&self) -> &str {
                &self.container_id
            }
        })*
        $(impl NamesIds for $none {})*
    };
}

names_ids! {
    pod: StopPodSandboxRequest, RemovePodSandboxRequest, PodSandboxStatusRequest,
        CreateContainerRequest, PortForwardRequest, PodSandboxStatsRequest,
        UpdatePodSandboxResourcesRequest;
    container: StartContainerRequest, StopContainerRequest, RemoveContainerRequest,
        ContainerStatusRequest, ReopenContainerLogRequest, ExecSyncRequest, ExecRequest,
        AttachRequest, UpdateContainerResourcesRequest, ContainerStatsRequest,
        CheckpointContainerRequest;
    none: VersionRequest, StatusRequest, RuntimeConfigRequest, RunPodSandboxRequest,
        ListPodSandboxRequest, UpdateRuntimeConfigRequest, ListContainersRequest,
        GetEventsRequest, ListContainerStatsRequest, ListPodSandboxStatsRequest,
        ListMetricDescriptorsRequest, ListPodSandboxMetricsRequest,
        ListImagesRequest, ImageStatusRequest, PullImageRequest, RemoveImageRequest,
        ImageFsInfoRequest, StreamPodSandboxesRequest, StreamContainersRequest,
        StreamContainerStatsRequest, StreamPodSandboxStatsRequest,
        StreamPodSandboxMetricsRequest, StreamImagesRequest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_their_ids() {
        let create = CreateContainerRequest {
            pod_sandbox_id: "p1".into(),
            ..Default::default()
        };
        assert_eq!((create.pod_id(), create.container_id()), ("p1", ""));
        let exec = ExecSyncRequest {
            container_id: "c1".into(),
            ..Default::default()
        };
        assert_eq!((exec.pod_id(), exec.container_id()), ("", "c1"));
        assert_eq!(VersionRequest::default().pod_id(), "");
    }
}
