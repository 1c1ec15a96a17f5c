//! ttrpc over one logical connection of the mux: payloads are the NRI
//! messages encoded with prost, so only the envelope is ttrpc's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::io::DuplexStream;
use ttrpc::r#async::transport::{Listener, Socket};
use ttrpc::r#async::{Client, MethodHandler, Server, Service, TtrpcContext};

pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";

/// How a call to the peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection lost: {0}")]
    Closed(String),
    #[error("{message}")]
    Status {
        unimplemented: bool,
        message: String,
    },
    #[error("undecodable answer: {0}")]
    Decode(#[from] prost::DecodeError),
}

impl CallError {
    /// What ends the connection, as the reference decides: a peer that
    /// cannot answer in time or at all. An error the peer returned does not.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, CallError::Status { .. })
    }
}

pub fn client(stream: DuplexStream) -> Client {
    Client::new(Socket::new(stream))
}

/// One unary call, `timeout` bounding the wait and told to the peer.
pub async fn call<Req, Resp>(
    client: &Client,
    service: &str,
    method: &str,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, CallError>
where
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    let mut envelope = ttrpc::Request::new();
    envelope.service = service.to_string();
    envelope.method = method.to_string();
    envelope.payload = request.encode_to_vec();
    envelope.timeout_nano = i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX);
    let started = std::time::Instant::now();
    match tokio::time::timeout(timeout, client.request(envelope)).await {
        Err(_) => Err(CallError::Timeout(timeout)),
        // The peer's server gave up at the deadline it was told: as late
        // an answer as none.
        Ok(Err(ttrpc::Error::RpcStatus(status)))
            if status.code() == ttrpc::Code::DEADLINE_EXCEEDED =>
        {
            Err(CallError::Timeout(timeout))
        }
        Ok(Err(ttrpc::Error::RpcStatus(status))) => Err(CallError::Status {
            unimplemented: status.code() == ttrpc::Code::UNIMPLEMENTED,
            message: status.message,
        }),
        // The client's own wait for the deadline it sent.
        Ok(Err(_)) if started.elapsed() >= timeout => Err(CallError::Timeout(timeout)),
        Ok(Err(err)) => Err(CallError::Closed(err.to_string())),
        Ok(Ok(response)) => Ok(Resp::decode(response.payload.as_slice())?),
    }
}

/// Answers a method's encoded request with an encoded response or an error
/// message (sent as ttrpc status UNKNOWN, as a Go handler's error is).
pub type Handler =
    Arc<dyn Fn(&'static str, Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>> + Send + Sync>;

struct Method {
    name: &'static str,
    handler: Handler,
}

#[async_trait::async_trait]
impl MethodHandler for Method {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        request: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let mut response = ttrpc::Response::new();
        match (self.handler)(self.name, request.payload).await {
            Ok(payload) => response.payload = payload,
            Err(message) => {
                response.status = Some(ttrpc::get_status(ttrpc::Code::UNKNOWN, message)).into();
            }
        }
        Ok(response)
    }
}

/// Serves `methods` of `service` on `stream`; the connection ends with the
/// stream or when the returned server is shut down.
pub async fn serve(
    stream: DuplexStream,
    service: &str,
    methods: &[&'static str],
    handler: Handler,
) -> Result<Server, ttrpc::Error> {
    let methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = methods
        .iter()
        .map(|&name| {
            let method: Box<dyn MethodHandler + Send + Sync> = Box::new(Method {
                name,
                handler: Arc::clone(&handler),
            });
            (name.to_string(), method)
        })
        .collect();
    let service_def = Service {
        methods,
        streams: HashMap::new(),
    };
    let listener = Listener::new(futures_util::stream::once(async move {
        Ok::<_, std::io::Error>(stream)
    }));
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(HashMap::from([(service.to_string(), service_def)]));
    server.start().await?;
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api;

    /// The peer's server and the caller give up at the same deadline; in
    /// either order the caller sees a timeout (fatal), never a plugin error.
    #[tokio::test]
    async fn a_late_answer_is_a_timeout_whoever_gives_up_first() {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let handler: Handler = Arc::new(|_, _| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Vec::new())
            })
        });
        let _server = serve(far, PLUGIN_SERVICE, &["Slow"], handler)
            .await
            .unwrap();
        let client = client(near);
        for _ in 0..20 {
            let err = call::<_, api::Empty>(
                &client,
                PLUGIN_SERVICE,
                "Slow",
                &api::Empty {},
                Duration::from_millis(20),
            )
            .await
            .unwrap_err();
            assert!(matches!(err, CallError::Timeout(_)), "{err:?}");
            assert!(err.is_fatal());
        }
    }

    #[tokio::test]
    async fn an_error_the_peer_returns_is_not_fatal_and_keeps_its_message() {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let handler: Handler =
            Arc::new(|_, _| Box::pin(async { Err("no pods today".to_string()) }));
        let _server = serve(far, PLUGIN_SERVICE, &["Refuse"], handler)
            .await
            .unwrap();
        let client = client(near);
        let err = call::<_, api::Empty>(
            &client,
            PLUGIN_SERVICE,
            "Refuse",
            &api::Empty {},
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(!err.is_fatal());
        assert_eq!(err.to_string(), "no pods today");
        let err = call::<_, api::Empty>(
            &client,
            PLUGIN_SERVICE,
            "Missing",
            &api::Empty {},
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                CallError::Status {
                    unimplemented: true,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
