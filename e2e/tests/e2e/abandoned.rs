//! The kubelet gives up on a slow RunPodSandbox or CreateContainer at its
//! deadline and retries with the same name. The creation finishes anyway;
//! the retry gets the object made meanwhile instead of a "name is reserved"
//! conflict that never ends, and nothing is left half made.

use std::time::{Duration, Instant};

use berth_e2e::cri::{
    ContainerState, CreateContainerRequest, ListContainersRequest, ListPodSandboxRequest,
    PodSandboxState, RunPodSandboxRequest, StartContainerRequest,
};
use berth_e2e::net::{BIN_DIR, Net, can_run_network};
use berth_e2e::world::{World, can_run_here};
use berth_e2e::{mounts_under, shims_under, write_script};
use tonic::Code;

/// What the kubelet's deadline does: the server sees `grpc-timeout`, and
/// the client stops waiting (dropping the call resets its stream).
async fn give_up_after<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Code {
    match tokio::time::timeout(Duration::from_secs(1), call).await {
        Err(_) => Code::DeadlineExceeded,
        Ok(Err(status)) => status.code(),
        Ok(Ok(_)) => panic!("answered before the deadline: not slow enough"),
    }
}

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(1));
    request
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_the_deadline_gets_the_pod_and_the_container_made_meanwhile() {
    if !can_run_here() || !can_run_network() {
        return;
    }
    // A CNI plugin and an OCI runtime that each take 3 s: past the deadline.
    let net = Net::with_plugins(210, Some(r#"{ "type": "berth-slow" }"#));
    let bin = net.dir().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    write_script(
        &bin.join("berth-slow"),
        "#!/bin/sh\ninput=$(cat)\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  sleep 3\n  echo \"$input\" | jq -c .prevResult\nfi\n",
    );
    let slow_runc = bin.join("slow-runc");
    write_script(
        &slow_runc,
        "#!/bin/sh\nfor a; do if [ \"$a\" = create ]; then sleep 3; fi; done\nexec runc \"$@\"\n",
    );
    // The first line lands in the world's [cni] table.
    let extra = format!(
        "bin_dirs = [\"{}\", \"{BIN_DIR}\"]\n[runtimes.slow]\npath = \"{}\"\n",
        bin.display(),
        slow_runc.display()
    );
    let mut w = World::with_config("abandoned", &extra).await;
    w.join_network(&net).await;

    let run = RunPodSandboxRequest {
        config: Some(w.networked_pod_config("slow")),
        runtime_handler: "slow".into(),
    };
    let mut client = w.client.clone();
    let code = give_up_after(client.run_pod_sandbox(with_deadline(run.clone()))).await;
    assert!(
        matches!(code, Code::DeadlineExceeded | Code::Cancelled),
        "{code:?}"
    );
    // Still being made: a clear conflict naming what holds the name.
    let err = w.client.run_pod_sandbox(run.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let pods = async || {
        let mut client = w.client.clone();
        client
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items
    };
    wait_for("the pod to be ready", async || {
        pods()
            .await
            .iter()
            .any(|p| p.state == PodSandboxState::SandboxReady as i32)
    })
    .await;
    let listed = pods().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    // The retry gets the pod made meanwhile, once; after that it is an
    // ordinary duplicate.
    let pod = w
        .client
        .run_pod_sandbox(run.clone())
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    assert_eq!(pod, listed[0].id);
    let err = w.client.run_pod_sandbox(run).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    let create = CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(w.container("slow", "sleep 600")),
        sandbox_config: Some(w.networked_pod_config("slow")),
    };
    let code = give_up_after(client.create_container(with_deadline(create.clone()))).await;
    assert!(
        matches!(code, Code::DeadlineExceeded | Code::Cancelled),
        "{code:?}"
    );
    let containers = async || {
        let mut client = w.client.clone();
        client
            .list_containers(ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
    };
    wait_for("the container to be created", async || {
        !containers().await.is_empty()
    })
    .await;
    let listed = containers().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].state, ContainerState::ContainerCreated as i32);
    let id = w
        .client
        .create_container(create)
        .await
        .unwrap()
        .into_inner()
        .container_id;
    assert_eq!(id, listed[0].id);
    w.client
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        w.status(&id).await.state,
        ContainerState::ContainerRunning as i32
    );

    w.remove_pod(&pod).await;
    let dir = w.paths().dir().to_path_buf();
    assert_eq!(shims_under(&dir), 0);
    assert!(mounts_under(&dir).is_empty(), "{:?}", mounts_under(&dir));
    assert_eq!(net.ports().trim(), "", "veths left");
    assert!(
        net.allocated().is_empty(),
        "IPs left: {:?}",
        net.allocated()
    );
}
