//! Prometheus metrics, named as CRI-O's `crio_*` ones with a `berth_` prefix,
//! served as OpenMetrics text at `http://<metrics.address>/metrics`.
//!
//! One process-wide [`Metrics`] ([`global`]): the RPC layer, the image pull
//! path and the state gauges all feed it, whether or not the endpoint is
//! enabled (recording is a few atomic adds).
//!
//! Gauges of things berthd already keeps (pods by state, later containers by
//! state and shims) are not updated as they change: each is a source that is
//! asked at scrape time, registered once with [`Metrics::state_gauge`] or
//! [`Metrics::gauge`], so the numbers can never drift from the records.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of `prometheus_client`'s text encoding.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationCode {
    operation: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorCode {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type Refresh = Box<dyn Fn() -> BoxFuture + Send + Sync>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Mutex<Registry>,
    /// Run before each scrape to update the sourced gauges.
    refreshers: Mutex<Vec<std::sync::Arc<Refresh>>>,
    /// One scrape at a time: refreshing clears and refills gauge families.
    scrape: tokio::sync::Mutex<()>,
    operations: Family<OperationCode, Counter>,
    operation_errors: Family<OperationCode, Counter>,
    operation_latency: HistogramFamily<Operation>,
    pulls_success: Counter,
    pulls_failure: Family<ErrorCode, Counter>,
    pull_bytes: Counter,
    pull_duration: Histogram,
}

fn rpc_latency_histogram() -> Histogram {
    // 100 µs to ~100 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("berth");
        let operations = Family::<OperationCode, Counter>::default();
        registry.register(
            "operations",
            "CRI RPCs completed, by RPC and gRPC code",
            operations.clone(),
        );
        let operation_errors = Family::<OperationCode, Counter>::default();
        registry.register(
            "operations_errors",
            "CRI RPCs that failed, by RPC and gRPC code",
            operation_errors.clone(),
        );
        let operation_latency: HistogramFamily<Operation> =
            Family::new_with_constructor(rpc_latency_histogram);
        registry.register(
            "operations_latency_seconds",
            "Latency of CRI RPCs, by RPC",
            operation_latency.clone(),
        );
        let pulls_success = Counter::default();
        registry.register(
            "image_pulls_success",
            "Image pulls that succeeded",
            pulls_success.clone(),
        );
        let pulls_failure = Family::<ErrorCode, Counter>::default();
        registry.register(
            "image_pulls_failure",
            "Image pulls that failed, by gRPC code",
            pulls_failure.clone(),
        );
        let pull_bytes = Counter::default();
        registry.register(
            "image_pulls_bytes",
            "Bytes downloaded from registries by successful pulls (manifests, configs, layer blobs)",
            pull_bytes.clone(),
        );
        // 10 ms to ~20 min.
        let pull_duration = Histogram::new(exponential_buckets(0.01, 4.0, 10));
        registry.register(
            "image_pulls_duration_seconds",
            "Duration of successful image pulls",
            pull_duration.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            refreshers: Mutex::new(Vec::new()),
            scrape: tokio::sync::Mutex::new(()),
            operations,
            operation_errors,
            operation_latency,
            pulls_success,
            pulls_failure,
            pull_bytes,
            pull_duration,
        }
    }

    /// One completed RPC, `code` being the gRPC code's name (`Ok`, `NotFound`…).
    pub fn rpc_done(&self, rpc: &str, code: tonic::Code, latency: Duration) {
        let labels = OperationCode {
            operation: rpc.to_string(),
            code: format!("{code:?}"),
        };
        self.operations.get_or_create(&labels).inc();
        if code != tonic::Code::Ok {
            self.operation_errors.get_or_create(&labels).inc();
        }
        self.operation_latency
            .get_or_create(&Operation {
                operation: labels.operation,
            })
            .observe(latency.as_secs_f64());
    }

    pub fn pull_succeeded(&self, downloaded_bytes: u64, duration: Duration) {
        self.pulls_success.inc();
        self.pull_bytes.inc_by(downloaded_bytes);
        self.pull_duration.observe(duration.as_secs_f64());
    }

    pub fn pull_failed(&self, code: tonic::Code) {
        self.pulls_failure
            .get_or_create(&ErrorCode {
                code: format!("{code:?}"),
            })
            .inc();
    }

    /// Registers `berth_<name>{state="…"}`, set at every scrape from what
    /// `source` answers: a count per state. Answer every state the object can
    /// be in (zeros included) so a state that empties shows 0, not nothing.
    pub fn state_gauge<F, Fut>(&self, name: &str, help: &str, source: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<(&'static str, i64)>> + Send + 'static,
    {
        let family = Family::<StateLabel, Gauge>::default();
        berth_host::sync::lock(&self.registry).register(name, help, family.clone());
        self.add_refresher(Box::new(move || {
            let family = family.clone();
            let counts = source();
            Box::pin(async move {
                let counts = counts.await;
                family.clear();
                for (state, count) in counts {
                    family
                        .get_or_create(&StateLabel {
                            state: state.to_string(),
                        })
                        .set(count);
                }
            })
        }));
    }

    /// Registers `berth_<name>`, set at every scrape from `source`.
    pub fn gauge<F, Fut>(&self, name: &str, help: &str, source: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = i64> + Send + 'static,
    {
        let gauge = Gauge::<i64>::default();
        berth_host::sync::lock(&self.registry).register(name, help, gauge.clone());
        self.add_refresher(Box::new(move || {
            let gauge = gauge.clone();
            let value = source();
            Box::pin(async move {
                gauge.set(value.await);
            })
        }));
    }

    fn add_refresher(&self, refresh: Refresh) {
        berth_host::sync::lock(&self.refreshers).push(std::sync::Arc::new(refresh));
    }

    /// The OpenMetrics text of every metric, sourced gauges refreshed.
    pub async fn render(&self) -> String {
        let _one_at_a_time = self.scrape.lock().await;
        let refreshers = berth_host::sync::lock(&self.refreshers).clone();
        for refresh in refreshers {
            refresh().await;
        }
        let mut text = String::new();
        let registry = berth_host::sync::lock(&self.registry);
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String does not fail");
        text
    }
}

/// Binds the metrics endpoint; an error names the address.
pub async fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| MetricsError::Bind { address, source })
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!("metrics endpoint: cannot accept a connection: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(handle);
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("metrics endpoint: connection ended: {err}");
            }
        });
    }
}

async fn handle(
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let response = |status: http::StatusCode, content_type: &str, body: String| {
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if request.uri().path() != "/metrics" {
        return Ok(response(
            http::StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics is served here\n".into(),
        ));
    }
    if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        return Ok(response(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "/metrics answers GET\n".into(),
        ));
    }
    let text = global().render().await;
    Ok(response(http::StatusCode::OK, CONTENT_TYPE, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_rpc_counts_and_sourced_gauges() {
        let metrics = Metrics::new();
        metrics.rpc_done("Version", tonic::Code::Ok, Duration::from_millis(2));
        metrics.rpc_done("PodSandboxStatus", tonic::Code::NotFound, Duration::ZERO);
        metrics.pull_succeeded(1234, Duration::from_secs(1));
        metrics.state_gauge("pods", "Pods by state", || async {
            vec![("ready", 2), ("notready", 0)]
        });
        metrics.gauge("shims", "Shims", || async { 3 });
        let text = metrics.render().await;
        for line in [
            r#"berth_operations_total{operation="Version",code="Ok"} 1"#,
            r#"berth_operations_errors_total{operation="PodSandboxStatus",code="NotFound"} 1"#,
            r#"berth_operations_latency_seconds_count{operation="Version"} 1"#,
            "berth_image_pulls_bytes_total 1234",
            "berth_image_pulls_success_total 1",
            r#"berth_pods{state="ready"} 2"#,
            r#"berth_pods{state="notready"} 0"#,
            "berth_shims 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains(r#"errors_total{operation="Version""#));
    }
}
