//! A tower layer that gives every gRPC call a `tracing` span and logs its
//! latency and result code when it completes, and counts it in the metrics.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};
use tracing::Instrument;

#[derive(Debug, Clone, Copy, Default)]
pub struct RpcTraceLayer;

impl<S> Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;

    fn layer(&self, inner: S) -> RpcTrace<S> {
        RpcTrace { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcTrace<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcTrace<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // "/runtime.v1.RuntimeService/Version" → "Version"
        let rpc = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        // Only the CRI's own services get a label of their own: a client
        // cannot grow the metrics without bound by calling made-up paths.
        let counted = if request.uri().path().starts_with("/runtime.v1.") {
            rpc.clone()
        } else {
            "other".to_owned()
        };
        // The handler records the IDs once it has decoded the request (see
        // `cri::span_ids`); declared here so every RPC's records carry them.
        let span = tracing::info_span!(
            "rpc",
            rpc = %rpc,
            pod_id = tracing::field::Empty,
            container_id = tracing::field::Empty,
            steps = tracing::field::Empty,
        );
        let started = Instant::now();
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let timed = span.clone();
        Box::pin(
            async move {
                let result = future.await;
                let latency = started.elapsed();
                let latency_us = latency.as_micros() as u64;
                // The critical path's steps (crate::steps), on the span and
                // on the completion record.
                let steps = crate::steps::take(&timed);
                if !steps.is_empty() {
                    timed.record("steps", steps.as_str());
                }
                match &result {
                    Ok(response) => {
                        // Unary success carries grpc-status in the trailers;
                        // an error is a trailers-only response with it here.
                        let code = match tonic::Status::from_header_map(response.headers()) {
                            Some(status) if status.code() != tonic::Code::Ok => {
                                tracing::info!(
                                    latency_us,
                                    steps,
                                    code = ?status.code(),
                                    error = status.message(),
                                    "rpc failed"
                                );
                                status.code()
                            }
                            _ => {
                                tracing::debug!(latency_us, steps, code = ?tonic::Code::Ok, "rpc done");
                                tonic::Code::Ok
                            }
                        };
                        crate::metrics::global().rpc_done(&counted, code, latency);
                    }
                    Err(err) => tracing::warn!(latency_us, error = %err, "rpc transport error"),
                }
                result
            }
            .instrument(span),
        )
    }
}
