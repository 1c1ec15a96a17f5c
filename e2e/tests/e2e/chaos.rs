//! berthd killed (-9) at random moments while pods (on a CNI bridge
//! network) and containers are created and torn down in parallel: after
//! each restart every object is either listed and removable or gone, a
//! kubelet-style clean-up (stop and remove whatever is listed) succeeds,
//! and nothing is left behind: no shim, mount, record, cgroup, veth, IP or
//! iptables rule. `BERTH_CHAOS_SEED` replays the kill times.

use std::time::{Duration, Instant};

use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{
    CreateContainerRequest, ListContainersRequest, ListPodSandboxRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use berth_e2e::net::{Net, can_run_network, sh};
use berth_e2e::world::{World, can_run_here};
use berth_e2e::{Berthd, mounts_under, shims_under};
use nix::sys::signal::Signal;
use tonic::transport::Channel;

const ROUNDS: usize = 4;
const LANES: usize = 4;

/// xorshift64: enough randomness for kill times, replayable from a seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Pods with one started container each, then their teardown, in a loop
/// until an RPC fails (berthd was killed).
fn churn(
    mut client: RuntimeServiceClient<Channel>,
    w: &World,
    lane: usize,
) -> impl Future<Output = usize> + use<> {
    let configs: Vec<_> = (0..1000)
        .map(|i| {
            let name = format!("chaos-{lane}-{i}");
            (
                w.networked_pod_config(&name),
                w.container(&format!("c-{lane}-{i}"), "sleep 600"),
            )
        })
        .collect();
    async move {
        for (done, (sandbox, container)) in configs.into_iter().enumerate() {
            let step = async {
                let pod = client
                    .run_pod_sandbox(RunPodSandboxRequest {
                        config: Some(sandbox.clone()),
                        runtime_handler: String::new(),
                    })
                    .await?
                    .into_inner()
                    .pod_sandbox_id;
                let id = client
                    .create_container(CreateContainerRequest {
                        pod_sandbox_id: pod.clone(),
                        config: Some(container),
                        sandbox_config: Some(sandbox),
                    })
                    .await?
                    .into_inner()
                    .container_id;
                client
                    .start_container(StartContainerRequest { container_id: id })
                    .await?;
                if done % 2 == 0 {
                    client
                        .stop_pod_sandbox(StopPodSandboxRequest {
                            pod_sandbox_id: pod.clone(),
                        })
                        .await?;
                    client
                        .remove_pod_sandbox(RemovePodSandboxRequest {
                            pod_sandbox_id: pod,
                        })
                        .await?;
                }
                Ok::<(), tonic::Status>(())
            };
            if step.await.is_err() {
                return done;
            }
        }
        1000
    }
}

/// What the kubelet does with a runtime it finds objects in: stop and
/// remove every pod, then every container left.
async fn clean_up(client: &mut RuntimeServiceClient<Channel>) {
    let pods = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    for pod in pods {
        berth_e2e::stop_and_remove_pod(client, &pod.id).await;
    }
    let containers = client
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    for c in containers {
        client
            .remove_container(RemoveContainerRequest {
                container_id: c.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("remove container {}: {e:?}", c.id));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_leaves_everything_removable_and_nothing_behind() {
    if !can_run_here() || !can_run_network() {
        return;
    }
    let seed = std::env::var("BERTH_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("BERTH_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);
    let mut w = World::new("chaos").await;
    let net = Net::new(200);
    w.join_network(&net).await;
    for round in 0..ROUNDS {
        let mut lanes = tokio::task::JoinSet::new();
        for lane in 0..LANES {
            lanes.spawn(churn(w.client.clone(), &w, lane + LANES * round));
        }
        let delay = Duration::from_millis(300 + rng.below(2000));
        tokio::time::sleep(delay).await;
        let berthd = w.berthd.take().unwrap();
        let (_, paths) = berthd.stop_with(Signal::SIGKILL).await;
        let mut steps = 0;
        while let Some(done) = lanes.join_next().await {
            steps += done.unwrap();
        }
        eprintln!("round {round}: killed after {delay:?}, {steps} pods done");

        let started = Instant::now();
        let berthd = Berthd::start_in(paths, w.options.clone()).await;
        w.client = berthd.runtime().await;
        w.berthd = Some(berthd);
        eprintln!("round {round}: restarted in {:?}", started.elapsed());
        clean_up(&mut w.client).await;

        let dir = w.paths().dir().to_path_buf();
        assert_eq!(shims_under(&dir), 0, "round {round}: shims left");
        let mounts = mounts_under(&dir);
        assert!(mounts.is_empty(), "round {round}: {mounts:?}");
        for sub in ["containers/records", "containers/state", "pods"] {
            let left: Vec<_> = std::fs::read_dir(w.paths().root().join(sub))
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "round {round}: {sub}: {left:?}");
        }
        let cgroups = w.cgroups_left();
        assert!(cgroups.is_empty(), "round {round}: {cgroups:?}");
        assert_eq!(net.ports().trim(), "", "round {round}: veths left");
        assert!(
            net.allocated().is_empty(),
            "round {round}: IPs left: {:?}",
            net.allocated()
        );
        let rules = String::from_utf8_lossy(&sh(&["iptables-save"]).stdout).into_owned();
        let left: Vec<&str> = rules.lines().filter(|l| l.contains(&net.name)).collect();
        assert!(
            left.is_empty(),
            "round {round}: iptables rules left: {left:?}"
        );
    }
    // Still a working runtime.
    let pod = w.pod("after").await;
    let id = w.run(&pod, w.container("after", "sleep 60")).await;
    w.stop(&id, 0).await;
    w.remove_pod(&pod).await;
}
