use berth_proto::cri::runtime_service_server::RuntimeService;
use berth_proto::cri::*;

use super::events::EventStream;
use super::list_stream::Batches;

super::cri_service_impl! {
    impl RuntimeService {
        type GetContainerEventsStream = EventStream;
        type StreamPodSandboxesStream = Batches<StreamPodSandboxesResponse>;
        type StreamContainersStream = Batches<StreamContainersResponse>;
        type StreamContainerStatsStream = Batches<StreamContainerStatsResponse>;
        type StreamPodSandboxStatsStream = Batches<StreamPodSandboxStatsResponse>;
        type StreamPodSandboxMetricsStream = Batches<StreamPodSandboxMetricsResponse>;
        handled {
            version(VersionRequest) -> VersionResponse;
            status(StatusRequest) -> StatusResponse;
            runtime_config(RuntimeConfigRequest) -> RuntimeConfigResponse;
            run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse;
            stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse;
            remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse;
            pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse;
            list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse;
            stream_pod_sandboxes(StreamPodSandboxesRequest) -> Batches<StreamPodSandboxesResponse>;
            update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest) -> UpdatePodSandboxResourcesResponse;
            update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
            create_container(CreateContainerRequest) -> CreateContainerResponse;
            start_container(StartContainerRequest) -> StartContainerResponse;
            stop_container(StopContainerRequest) -> StopContainerResponse;
            remove_container(RemoveContainerRequest) -> RemoveContainerResponse;
            list_containers(ListContainersRequest) -> ListContainersResponse;
            stream_containers(StreamContainersRequest) -> Batches<StreamContainersResponse>;
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
            stream_container_stats(StreamContainerStatsRequest) -> Batches<StreamContainerStatsResponse>;
            pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse;
            list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse;
            stream_pod_sandbox_stats(StreamPodSandboxStatsRequest) -> Batches<StreamPodSandboxStatsResponse>;
            list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse;
            list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse;
            stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest) -> Batches<StreamPodSandboxMetricsResponse>;
            checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse;
        }
    }
}
