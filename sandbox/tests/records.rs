//! Start-up with damaged pod records: the intact pods are served, the
//! unreadable ones are reported by path, hold no name (so the kubelet's next
//! RunPodSandbox of the same pod succeeds) and what they left is removed.

use std::sync::Arc;
use std::time::Duration;

use berth_sandbox::record::{self, Layout, Namespaces, Pod, PodId, State};
use berth_sandbox::{Error, Mode, NamespaceModes, Options, PodSpec, RuntimeHandlers, Sandboxes};

#[derive(Debug)]
struct Runc;

impl RuntimeHandlers for Runc {
    fn names(&self) -> Vec<String> {
        vec!["runc".into()]
    }
    fn default_name(&self) -> String {
        "runc".into()
    }
}

/// A pod in the host's namespaces: setting it up needs no privileges.
fn spec(name: &str) -> PodSpec {
    PodSpec {
        name: name.into(),
        uid: format!("uid-{name}"),
        namespace: "test".into(),
        namespaces: NamespaceModes {
            network: Mode::Node,
            pid: Mode::Container,
            ipc: Mode::Node,
        },
        ..PodSpec::default()
    }
}

fn open(layout: &Layout) -> (Sandboxes, Vec<String>) {
    let cni = berth_cni::Cni::new(berth_cni::Options {
        conf_dir: layout.root.join("net.d"),
        bin_dirs: vec![],
        cache_dir: layout.cni_cache_dir(),
        plugin_timeout: Duration::from_secs(1),
    });
    let options = Options {
        layout: layout.clone(),
        shm_size: 1 << 20,
        shim: "berth-shim".into(),
        runtimes: Arc::new(Runc),
        default_cgroup_parent: "/berth-test".into(),
        cgroup_driver: berth_host::cgroup::Driver::Cgroupfs,
    };
    Sandboxes::open(options, cni)
}

#[tokio::test]
async fn unreadable_records_are_reported_and_hold_no_name() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout {
        root: dir.path().join("root"),
        run_root: dir.path().join("run"),
    };
    let pod = |name: &str| {
        let id = PodId::random().unwrap();
        Pod {
            id: id.clone(),
            spec: spec(name),
            created_at: 1,
            state: State::NotReady,
            complete: true,
            runtime_handler: "runc".into(),
            hostname: name.into(),
            cgroup_parent: "/berth-test".into(),
            namespaces: Namespaces::default(),
            files: layout.files(&id),
            infra: None,
            network: None,
        }
    };
    let keep = pod("keep");
    record::save(&layout, &keep).unwrap();
    let keep = keep.id;
    // Pod "broken"'s record cut in half; one of garbage; an empty one (a
    // crash before its data reached the disk).
    let half = pod("broken");
    record::save(&layout, &half).unwrap();
    let bytes = std::fs::read(layout.record(&half.id)).unwrap();
    std::fs::write(layout.record(&half.id), &bytes[..bytes.len() / 2]).unwrap();
    let mut broken = vec![half.id];
    for content in [b"\x00\xffgarbage".as_slice(), b""] {
        let id = PodId::random().unwrap();
        std::fs::create_dir_all(layout.state_dir(&id)).unwrap();
        std::fs::write(layout.record(&id), content).unwrap();
        broken.push(id);
    }
    // A crash during the first write of a record: only the temp file. Not
    // an error: nothing was set up, the dir just goes.
    let unrecorded = PodId::random().unwrap();
    std::fs::create_dir_all(layout.state_dir(&unrecorded)).unwrap();
    std::fs::write(layout.state_dir(&unrecorded).join("pod.json.tmp"), b"{").unwrap();

    let (pods, errors) = open(&layout);
    let ids: Vec<PodId> = pods.list().await.into_iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![keep.clone()]);
    assert!(!layout.state_dir(&unrecorded).exists());
    assert_eq!(errors.len(), 3, "{errors:?}");
    for id in &broken {
        let path = layout.record(id).display().to_string();
        assert!(errors.iter().any(|e| e.starts_with(&path)), "{errors:?}");
    }
    // What they left is torn down (here: their dirs), and only that.
    pods.reclaim_unreadable().await;
    for id in &broken {
        assert!(!layout.state_dir(id).exists(), "{id} is still there");
    }
    assert!(layout.record(&keep).is_file());

    // The intact pod still holds its name; the broken one's is free.
    match pods.run(spec("keep")).await {
        Err(Error::NameReserved { holder, .. }) => assert_eq!(holder, keep),
        other => panic!("expected the name to be reserved: {other:?}"),
    }
    let again = pods.run(spec("broken")).await.unwrap();
    assert_eq!(pods.get(again.as_str()).await.unwrap().state, State::Ready);
    pods.remove(again.as_str()).await.unwrap();
    pods.remove(keep.as_str()).await.unwrap();
    assert!(pods.list().await.is_empty());
}
