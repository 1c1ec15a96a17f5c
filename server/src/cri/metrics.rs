//! The gauges berthd answers from its records at scrape time.

use berth_sandbox::State;

use super::CriService;
use crate::metrics::Metrics;

impl CriService {
    /// Registers `berth_pods{state}` and `berth_images`. Containers by state
    /// and the shim count register here the same way once berthd keeps
    /// containers.
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
    }
}
