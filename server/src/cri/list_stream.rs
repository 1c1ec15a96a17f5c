//! The `Stream*` list RPCs (KEP-5825, kubelet's CRIListStreaming): the items
//! of the matching List RPC, with its filter, sent in batches that each stay
//! far below gRPC's 16 MiB message limit however many items there are.

use std::pin::Pin;

use berth_proto::cri::*;
use prost::Message;
use tokio_stream::Stream;
use tonic::Status;

use super::CriService;

/// Items per message at most (CRI-O's chunk size).
const MAX_ITEMS: usize = 3000;
/// Encoded bytes per message at most: item sizes vary (a pod's annotations
/// alone may be large), so a count bound is not enough.
const MAX_BYTES: usize = 4 << 20;

/// A finished list, sent as a stream of responses.
pub type Batches<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Splits `items` in order into runs of at most [`MAX_ITEMS`] items and,
/// unless one item alone is larger, [`MAX_BYTES`] encoded bytes.
fn batches<T: Message>(items: Vec<T>) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for item in items {
        // A repeated field's entry costs its length prefix and tag too.
        let size = item.encoded_len() + 8;
        if !current.is_empty() && (current.len() == MAX_ITEMS || bytes + size > MAX_BYTES) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(item);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn stream<T: Message, R: Send + 'static>(items: Vec<T>, wrap: fn(Vec<T>) -> R) -> Batches<R> {
    let responses: Vec<Result<R, Status>> = batches(items).into_iter().map(wrap).map(Ok).collect();
    Box::pin(tokio_stream::iter(responses))
}

impl CriService {
    pub(super) async fn stream_pod_sandboxes(
        &self,
        request: StreamPodSandboxesRequest,
    ) -> Result<Batches<StreamPodSandboxesResponse>, Status> {
        let list = self
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: request.filter,
            })
            .await?;
        Ok(stream(list.items, |pod_sandboxes| {
            StreamPodSandboxesResponse { pod_sandboxes }
        }))
    }

    pub(super) async fn stream_containers(
        &self,
        request: StreamContainersRequest,
    ) -> Result<Batches<StreamContainersResponse>, Status> {
        let list = self
            .list_containers(ListContainersRequest {
                filter: request.filter,
            })
            .await?;
        Ok(stream(list.containers, |containers| {
            StreamContainersResponse { containers }
        }))
    }

    pub(super) async fn stream_container_stats(
        &self,
        request: StreamContainerStatsRequest,
    ) -> Result<Batches<StreamContainerStatsResponse>, Status> {
        let list = self
            .list_container_stats(ListContainerStatsRequest {
                filter: request.filter,
            })
            .await?;
        Ok(stream(list.stats, |container_stats| {
            StreamContainerStatsResponse { container_stats }
        }))
    }

    pub(super) async fn stream_pod_sandbox_stats(
        &self,
        request: StreamPodSandboxStatsRequest,
    ) -> Result<Batches<StreamPodSandboxStatsResponse>, Status> {
        let list = self
            .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
                filter: request.filter,
            })
            .await?;
        Ok(stream(list.stats, |pod_sandbox_stats| {
            StreamPodSandboxStatsResponse { pod_sandbox_stats }
        }))
    }

    pub(super) async fn stream_pod_sandbox_metrics(
        &self,
        _request: StreamPodSandboxMetricsRequest,
    ) -> Result<Batches<StreamPodSandboxMetricsResponse>, Status> {
        let list = self
            .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
            .await?;
        Ok(stream(list.pod_metrics, |pod_sandbox_metrics| {
            StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            }
        }))
    }

    pub(super) async fn stream_images(
        &self,
        request: StreamImagesRequest,
    ) -> Result<Batches<StreamImagesResponse>, Status> {
        let list = self
            .list_images(ListImagesRequest {
                filter: request.filter,
            })
            .await?;
        Ok(stream(list.images, |images| StreamImagesResponse {
            images,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(annotation_bytes: usize) -> Container {
        Container {
            id: "c".repeat(64),
            annotations: [("a".to_string(), "x".repeat(annotation_bytes))].into(),
            ..Default::default()
        }
    }

    #[test]
    fn batches_keep_order_and_bound_count_and_bytes() {
        let many: Vec<Container> = (0..10_000).map(|_| container(10)).collect();
        let runs = batches(many.clone());
        assert_eq!(runs.iter().map(Vec::len).sum::<usize>(), 10_000);
        assert!(runs.iter().all(|r| r.len() <= MAX_ITEMS));
        assert_eq!(runs.concat(), many);

        // 100 items of 256 KiB: 25 MiB in all, over gRPC's limit in one.
        let big: Vec<Container> = (0..100).map(|_| container(256 << 10)).collect();
        let runs = batches(big);
        assert_eq!(runs.iter().map(Vec::len).sum::<usize>(), 100);
        for run in &runs {
            let response = StreamContainersResponse {
                containers: run.clone(),
            };
            assert!(
                response.encoded_len() <= MAX_BYTES,
                "{}",
                response.encoded_len()
            );
        }
        // One item larger than the byte bound still goes, alone.
        let huge = batches(vec![container(5 << 20), container(1)]);
        assert_eq!(huge.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
        assert!(batches(Vec::<Container>::new()).is_empty());
    }
}
