//! Creations whose caller gave up. The kubelet cancels RunPodSandbox and
//! CreateContainer at its deadline while a slow CNI plugin or runtime is
//! still working; cancelling the work half way would leave half a pod.
//! Instead it runs to the end in its own task, and when its caller is gone
//! the ID it made waits here for the retry with the same name, which gets
//! that object instead of "name is reserved" (CRI-O's resource cache).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Status;
use tracing::Instrument;

/// How long a finished but unclaimed creation is offered to a retry; the
/// object itself stays (the kubelet finds it by listing, or removes it).
const OFFERED_FOR: Duration = Duration::from_secs(3600);

#[derive(Default)]
pub struct Abandoned {
    /// Reserved name → the ID its abandoned creation made, and when.
    unclaimed: Mutex<HashMap<String, (String, Instant)>>,
}

impl Abandoned {
    /// Runs `create` (which returns the new object's ID) to completion even
    /// if the caller goes away meanwhile.
    pub async fn run<F>(self: &Arc<Self>, name: String, create: F) -> Result<String, Status>
    where
        F: Future<Output = Result<String, Status>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = Arc::clone(self);
        // The creation's records keep the RPC's span after its caller left.
        let create = create.in_current_span();
        tokio::spawn(async move {
            let result = create.await;
            // The receiver is gone: nobody learnt of the object.
            if let Err(Ok(id)) = tx.send(result) {
                tracing::info!(
                    name,
                    id,
                    "created after its caller gave up; kept for the retry"
                );
                this.lock().insert(name, (id, Instant::now()));
            }
        });
        rx.await
            .map_err(|_| Status::internal("the creation task stopped without an answer"))?
    }

    /// The ID an abandoned creation of `name` made, handed out once.
    pub fn claim(&self, name: &str) -> Option<String> {
        let mut unclaimed = self.lock();
        unclaimed.retain(|_, (_, at)| at.elapsed() < OFFERED_FOR);
        unclaimed.remove(name).map(|(id, _)| id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        berth_host::sync::lock(&self.unclaimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_abandoned_creation_is_claimed_once_by_name() {
        let abandoned = Arc::new(Abandoned::default());
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let call = {
            let abandoned = Arc::clone(&abandoned);
            tokio::spawn(async move {
                abandoned
                    .run("pod-a".into(), async move {
                        wait.await.unwrap();
                        Ok("id-1".to_string())
                    })
                    .await
            })
        };
        tokio::task::yield_now().await;
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        assert_eq!(abandoned.claim("pod-a"), None, "not finished yet");
        go.send(()).unwrap();
        for _ in 0..100 {
            if let Some(id) = abandoned.claim("pod-a") {
                assert_eq!(id, "id-1");
                assert_eq!(abandoned.claim("pod-a"), None, "handed out once");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the abandoned creation was never offered");
    }

    #[tokio::test]
    async fn a_caller_that_waits_gets_the_result_and_nothing_is_kept() {
        let abandoned = Arc::new(Abandoned::default());
        let id = abandoned
            .run("pod-b".into(), async { Ok("id-2".to_string()) })
            .await
            .unwrap();
        assert_eq!(id, "id-2");
        assert_eq!(abandoned.claim("pod-b"), None);
    }
}
