use berth_proto::cri::runtime_service_server::RuntimeService;
use berth_proto::cri::*;

use super::events::EventStream;

super::cri_service_impl! {
    impl RuntimeService {
        type GetContainerEventsStream = EventStream;
        handled {
            version(VersionRequest) -> VersionResponse;
            status(StatusRequest) -> StatusResponse;
            runtime_config(RuntimeConfigRequest) -> RuntimeConfigResponse;
            run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse;
            stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse;
            remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse;
            pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse;
            list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse;
            update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
            create_container(CreateContainerRequest) -> CreateContainerResponse;
            start_container(StartContainerRequest) -> StartContainerResponse;
            stop_container(StopContainerRequest) -> StopContainerResponse;
            remove_container(RemoveContainerRequest) -> RemoveContainerResponse;
            list_containers(ListContainersRequest) -> ListContainersResponse;
            container_status(ContainerStatusRequest) -> ContainerStatusResponse;
            reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse;
            exec_sync(ExecSyncRequest) -> ExecSyncResponse;
            port_forward(PortForwardRequest) -> PortForwardResponse;
            exec(ExecRequest) -> ExecResponse;
            attach(AttachRequest) -> AttachResponse;
            get_container_events(GetEventsRequest) -> EventStream;
            update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse;
            container_stats(ContainerStatsRequest) -> ContainerStatsResponse;
            list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse;
            pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse;
            list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse;
            list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse;
            list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse;
            checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse;
        }
    }
}
