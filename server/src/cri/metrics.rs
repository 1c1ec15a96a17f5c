//! The gauges berthd answers from its records at scrape time.

use berth_sandbox::State;

use super::CriService;
use crate::metrics::Metrics;

impl CriService {
    /// Registers `berth_pods{state}`, `berth_images`,
    /// `berth_containers{state}` and `berth_shims`.
    pub fn register_metrics(&self, metrics: &Metrics) {
        let images = self.images.clone();
        metrics.gauge("images", "Images in the store", move || {
            let count = images.list().len() as i64;
            async move { count }
        });
        let pods = self.pods.clone();
        metrics.state_gauge("pods", "Pod sandboxes by state", move || {
            let pods = pods.clone();
            async move {
                let (mut ready, mut not_ready) = (0, 0);
                for pod in pods.list().await {
                    match pod.effective_state() {
                        State::Ready => ready += 1,
                        State::NotReady => not_ready += 1,
                    }
                }
                vec![("ready", ready), ("notready", not_ready)]
            }
        });
        let containers = self.containers.clone();
        let census = move || {
            let containers = containers.clone();
            async move {
                tokio::task::spawn_blocking(move || containers.census())
                    .await
                    .unwrap_or_default()
            }
        };
        let by_state = census.clone();
        metrics.state_gauge("containers", "Containers by state", move || {
            let census = by_state();
            async move {
                let (states, _) = census.await;
                states.into_iter().collect()
            }
        });
        metrics.gauge("shims", "Live berth-shim processes", move || {
            let census = census();
            async move { census.await.1 }
        });
    }
}
