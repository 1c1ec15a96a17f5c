//! berth-shim and the runtime library against real runc: a busybox rootfs
//! in an overlay, containers created through the shim, CRI logs, exit files,
//! OOM kills, stop, exec, log reopen, a dying parent, and leaks.
//!
//! These drive the `berth-runtime` library directly (what berthd's container
//! RPCs will call), with the freshly built `berth-shim` binary.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use berth_e2e::bundles::Bundles;
use berth_runtime::lifecycle::{self, NewContainer};
use berth_runtime::oci::{EXEC_OUTPUT_CAP, OciRuntime, wait_exit};
use berth_runtime::signal::StopSignal;
use berth_runtime::spec::{ContainerSpec, Resources};
use berth_shim_protocol::{self as shim, ExitRecord};

fn can_run() -> bool {
    berth_e2e::can_run(
        berth_e2e::is_root()
            && berth_e2e::have_command("runc")
            && Path::new("/bin/busybox").exists(),
        "needs root, runc and busybox-static",
    )
}

/// One test's world: [`Bundles`] with a plain group file.
struct World(Bundles);

impl std::ops::Deref for World {
    type Target = Bundles;
    fn deref(&self) -> &Bundles {
        &self.0
    }
}

impl World {
    fn new() -> World {
        World(Bundles::new("root:x:0:\ntester:x:1234:\n"))
    }

    fn spec(&self, args: &[&str]) -> ContainerSpec {
        Bundles::spec(args)
    }

    /// Creates and starts; returns the container.
    fn run(&self, spec: ContainerSpec) -> NewContainer {
        self.start(spec).0
    }

    fn wait(&self, c: &NewContainer) -> ExitRecord {
        wait_exit(&c.run_dir, Duration::from_secs(60))
            .unwrap()
            .unwrap_or_else(|| panic!("{} did not exit; shim log: {}", c.id, shim_log(c)))
    }
}

fn shim_log(c: &NewContainer) -> String {
    std::fs::read_to_string(c.run_dir.join("shim.log")).unwrap_or_default()
}

fn log(c: &NewContainer) -> String {
    std::fs::read_to_string(&c.log_path).unwrap_or_default()
}

/// (stream, tag, text) of every CRI log line, checking the format.
fn records(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let ts = parts.next().unwrap();
            assert_eq!(ts.len(), 30, "timestamp {ts:?} in {line:?}");
            assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{line:?}");
            let stream = parts.next().unwrap().to_string();
            let tag = parts.next().unwrap().to_string();
            assert!(stream == "stdout" || stream == "stderr", "{line:?}");
            assert!(tag == "P" || tag == "F", "{line:?}");
            (stream, tag, parts.next().unwrap_or("").to_string())
        })
        .collect()
}

#[test]
fn output_goes_to_the_cri_log_and_exit_codes_are_recorded() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let mut spec = world.spec(&[
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; printf no-newline; exit 3",
    ]);
    // Below berthd's own: clamped, or runc would fail on this host.
    spec.resources.oom_score_adj = Some(-999);
    let c = world.run(spec);
    let exit = world.wait(&c);
    assert_eq!(exit.exit_code, 3);
    assert_eq!(exit.signal, None);
    assert!(!exit.oom_killed);
    assert!(exit.finished_at > 0);
    let recs = records(&log(&c));
    assert!(
        recs.contains(&("stdout".into(), "F".into(), "to-out".into())),
        "{recs:?}"
    );
    assert!(
        recs.contains(&("stderr".into(), "F".into(), "to-err".into())),
        "{recs:?}"
    );
    assert!(
        recs.contains(&("stdout".into(), "P".into(), "no-newline".into())),
        "{recs:?}"
    );
    world.remove(&c);

    // The runtime's view follows the lifecycle; a removed container is unknown.
    let c = world.new_container(world.spec(&["sleep", "1000"]));
    let created = lifecycle::create(&world.runtime, &c).unwrap();
    let state = world.runtime.state(&c.id).unwrap().unwrap();
    assert_eq!((state.status.as_str(), state.pid), ("created", created.pid));
    world.runtime.start(&c.id).unwrap();
    assert_eq!(
        world.runtime.state(&c.id).unwrap().unwrap().status,
        "running"
    );
    world.remove(&c);
    assert_eq!(world.runtime.state(&c.id).unwrap(), None);
}

#[test]
fn long_lines_are_split_into_partials() {
    if !can_run() {
        return;
    }
    let world = World::new();
    // 20000 'a's then a newline, in one write bigger than the shim's buffer.
    let c = world.run(world.spec(&["sh", "-c", "head -c 20000 /dev/zero | tr '\\0' a; echo"]));
    assert_eq!(world.wait(&c).exit_code, 0);
    let recs = records(&log(&c));
    let joined: String = recs.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(joined, "a".repeat(20000));
    assert!(recs.len() >= 2, "{} records", recs.len());
    assert_eq!(recs.last().unwrap().1, "F");
    assert!(recs[..recs.len() - 1].iter().all(|r| r.1 == "P"));
    world.remove(&c);
}

#[test]
fn create_failure_returns_the_runtime_message_and_cleans_up() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let c = world.new_container(world.spec(&["/no/such/binary"]));
    let err = lifecycle::create(&world.runtime, &c)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/no/such/binary"), "{err}");
    assert!(!c.run_dir.exists());
    assert!(berth_e2e::mounts_under(world.paths.dir()).is_empty());
}

#[test]
fn memory_limit_oom_is_recorded() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let mut spec = world.spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]);
    spec.resources = Resources {
        memory_limit: Some(16 << 20),
        ..Default::default()
    };
    let c = world.run(spec);
    let exit = world.wait(&c);
    assert!(exit.oom_killed, "{exit:?}; log: {}", log(&c));
    assert_eq!(exit.exit_code, 137);
    world.remove(&c);
}

#[test]
fn stop_sends_the_stop_signal_then_kills() {
    if !can_run() {
        return;
    }
    let world = World::new();
    // Honours the image's StopSignal: the trap exits cleanly.
    let trap = |sig: &str, action: &str| {
        world.run(world.spec(&[
            "sh",
            "-c",
            &format!("trap '{action}' {sig}; echo ready; while true; do sleep 0.1; done"),
        ]))
    };
    let wait_ready = |c: &NewContainer| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !log(c).contains("ready") {
            assert!(Instant::now() < deadline, "never ready");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let c = trap("USR1", "echo got-usr1; exit 0");
    wait_ready(&c);
    let exit = world
        .runtime
        .stop(
            &c.id,
            &c.run_dir,
            StopSignal::parse("SIGUSR1").unwrap(),
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(exit.exit_code, 0);
    assert!(log(&c).contains("got-usr1"));
    world.remove(&c);

    // Ignores it: killed after the timeout.
    let c = trap("TERM", "");
    wait_ready(&c);
    let exit = world
        .runtime
        .stop(
            &c.id,
            &c.run_dir,
            StopSignal::parse("TERM").unwrap(),
            Duration::from_millis(500),
        )
        .unwrap();
    assert_eq!((exit.exit_code, exit.signal), (137, Some(9)));
    world.remove(&c);

    // Timeout 0: killed at once, the trap never runs.
    let c = trap("TERM", "echo got-term; exit 0");
    wait_ready(&c);
    let exit = world
        .runtime
        .stop(
            &c.id,
            &c.run_dir,
            StopSignal::parse("SIGTERM").unwrap(),
            Duration::ZERO,
        )
        .unwrap();
    assert_eq!(exit.signal, Some(9));
    assert!(!log(&c).contains("got-term"));
    world.remove(&c);
}

#[test]
fn exec_sync_output_exit_code_cap_and_timeout() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let c = world.run(world.spec(&["sleep", "1000"]));
    let sh = |script: &str| vec!["sh".to_string(), "-c".to_string(), script.to_string()];

    let out = world
        .runtime
        .exec_sync(&c.id, &sh("echo out; echo err >&2; id -u; exit 7"), None)
        .unwrap();
    assert_eq!(out.exit_code, 7);
    assert_eq!(out.stdout, b"out\n0\n");
    assert_eq!(out.stderr, b"err\n");
    assert!(!out.timed_out);

    let out = world
        .runtime
        .exec_sync(&c.id, &sh("head -c 17000000 /dev/zero"), None)
        .unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout.len(), EXEC_OUTPUT_CAP);
    assert_eq!(out.stdout_dropped, 17_000_000 - EXEC_OUTPUT_CAP as u64);

    let out = world
        .runtime
        .exec_sync(
            &c.id,
            &sh("echo before; sleep 100"),
            Some(Duration::from_millis(500)),
        )
        .unwrap();
    assert!(out.timed_out);
    assert_eq!(out.stdout, b"before\n");
    // The timed-out process is gone from the container (at most a zombie:
    // its init, sleep, reaps nothing).
    let ps = world
        .runtime
        .exec_sync(&c.id, &sh("ps -o stat,args"), None)
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(ps.contains("sleep 1000"), "{ps}");
    assert!(
        !ps.lines()
            .any(|l| !l.trim_start().starts_with('Z') && l.contains("echo before")),
        "{ps}"
    );

    world
        .runtime
        .stop(
            &c.id,
            &c.run_dir,
            StopSignal::parse("KILL").unwrap(),
            Duration::ZERO,
        )
        .unwrap();
    world.remove(&c);
}

#[test]
fn user_comes_from_the_image_passwd() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let mut spec = world.spec(&["sh", "-c", "echo $(id -u):$(id -g):$HOME"]);
    spec.user.run_as_username = Some("tester".into());
    let c = world.run(spec);
    assert_eq!(world.wait(&c).exit_code, 0);
    assert!(
        log(&c).contains("stdout F 1234:1234:/home/tester"),
        "{}",
        log(&c)
    );
    world.remove(&c);
}

#[test]
fn readonly_rootfs_refuses_writes() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let mut spec = world.spec(&["touch", "/written"]);
    spec.readonly_rootfs = true;
    let c = world.run(spec);
    let exit = world.wait(&c);
    assert_ne!(exit.exit_code, 0);
    assert!(log(&c).contains("Read-only file system"), "{}", log(&c));
    world.remove(&c);
}

#[test]
fn log_reopen_after_rename_keeps_every_line() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let c = world.run(world.spec(&[
        "sh",
        "-c",
        "i=0; while true; do echo line$i; i=$((i+1)); usleep 1000; done",
    ]));
    let wait_lines = |path: &Path, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count()
            < n
        {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} lines in {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_lines(&c.log_path, 50);
    let rotated = c.log_path.with_extension("log.1");
    std::fs::rename(&c.log_path, &rotated).unwrap();
    shim::control(&c.run_dir, "reopen").unwrap();
    wait_lines(&c.log_path, 50);
    world
        .runtime
        .stop(
            &c.id,
            &c.run_dir,
            StopSignal::parse("KILL").unwrap(),
            Duration::ZERO,
        )
        .unwrap();
    let all = std::fs::read_to_string(&rotated).unwrap() + &log(&c);
    let numbers: Vec<usize> = records(&all)
        .into_iter()
        .map(|(_, tag, text)| {
            assert_eq!(tag, "F");
            text.strip_prefix("line").unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(numbers, (0..numbers.len()).collect::<Vec<_>>());
    world.remove(&c);
}

#[test]
fn control_socket_refuses_unknown_commands() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let c = world.run(world.spec(&["sleep", "1000"]));
    let err = shim::control(&c.run_dir, "explode")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown command"), "{err}");
    let err = shim::control(&c.run_dir, "resize 10 20")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no tty"), "{err}");
    world.remove(&c);
}

#[test]
fn attach_carries_stdin_and_output_and_stdin_once_closes_it() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let mut spec = world.spec(&["cat"]);
    spec.stdin = true;
    let mut c = world.new_container(spec);
    c.stdin_once = true;
    lifecycle::create(&world.runtime, &c).unwrap();
    let mut attach = shim::connect_unix(&c.run_dir.join(shim::ATTACH_SOCKET)).unwrap();
    world.runtime.start(&c.id).unwrap();
    attach.write_all(b"hello attach\n").unwrap();
    attach
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut header = [0u8; 5];
    attach.read_exact(&mut header).unwrap();
    assert_eq!(header[0], shim::STREAM_STDOUT);
    let mut body = vec![0u8; u32::from_be_bytes(header[1..].try_into().unwrap()) as usize];
    attach.read_exact(&mut body).unwrap();
    assert_eq!(body, b"hello attach\n");
    // Detaching ends stdin: cat sees EOF and exits 0.
    drop(attach);
    assert_eq!(world.wait(&c).exit_code, 0);
    assert!(log(&c).contains("stdout F hello attach"));
    world.remove(&c);
}

#[test]
fn tty_output_is_logged() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let mut spec = world.spec(&["sh", "-c", "tty; echo on-a-tty"]);
    spec.tty = true;
    let c = world.run(spec);
    assert_eq!(world.wait(&c).exit_code, 0);
    let text = log(&c);
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("on-a-tty"), "{text}");
    world.remove(&c);
}

#[test]
fn shim_outlives_its_parent_and_records_the_exit() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let c = world.new_container(world.spec(&["sh", "-c", "sleep 1; exit 5"]));
    // A stand-in for berthd that creates the container, then is SIGKILLed
    // together with its whole process group.
    let runtime = OciRuntime {
        shim: world.paths.dir().join("fake-berthd"),
        ..world.runtime.clone()
    };
    berth_e2e::write_script(
        &runtime.shim,
        &format!(
            "#!/bin/sh\n{} \"$@\" || exit 1\necho $$ > {}/fake.pid\nexec sleep 1000\n",
            world.runtime.shim.display(),
            world.paths.dir().display()
        ),
    );
    // lifecycle::create would clean up after the killed "berthd": prepare
    // the bundle by hand and call the driver, as berthd's create would.
    let rootfs = lifecycle::rootfs_of(&c.run_dir);
    berth_runtime::overlay::mount(
        &c.layers,
        &c.state_dir.join("upper"),
        &c.state_dir.join("work"),
        &rootfs,
    )
    .unwrap();
    let mut spec = c.spec.clone();
    spec.rootfs = rootfs;
    let oci = berth_runtime::spec::generate(&spec, c.own_oom_score_adj).unwrap();
    berth_runtime::spec::write(&c.run_dir, &oci).unwrap();
    // The fake "berthd" never exits: run create on a thread and kill it.
    let handle = {
        let runtime = runtime.clone();
        let options = berth_runtime::oci::CreateOptions {
            id: c.id.clone(),
            run_dir: c.run_dir.clone(),
            log_path: c.log_path.clone(),
            stdin: false,
            stdin_once: false,
            tty: false,
        };
        std::thread::spawn(move || runtime.create(&options).map(|_| ()))
    };
    let fake_pid_file = world.paths.dir().join("fake.pid");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fake_pid_file.exists() {
        assert!(
            Instant::now() < deadline,
            "fake berthd never created the container"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let fake: i32 = std::fs::read_to_string(&fake_pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let shim_pid: i32 = std::fs::read_to_string(c.run_dir.join(shim::SHIM_PID_FILE))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(fake),
        nix::sys::signal::Signal::SIGKILL,
    )
    .ok();
    // create's output() returns once the fake berthd is gone.
    let _ = handle.join();
    // The shim is in its own session, not a child of the fake berthd.
    let stat = std::fs::read_to_string(format!("/proc/{shim_pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    assert_ne!(fields[1].parse::<i32>().unwrap(), fake, "ppid");
    let session = fields[3].parse::<i32>().unwrap();
    assert_ne!(
        session,
        nix::unistd::getsid(None).unwrap().as_raw(),
        "session"
    );
    world.runtime.start(&c.id).unwrap();
    assert_eq!(world.wait(&c).exit_code, 5);
    world.remove(&c);
}

/// Every container's leftovers: mounts below the world, shims naming it,
/// cgroups named after it, runc state.
fn assert_no_leaks(world: &World, ids: &[String]) {
    assert!(berth_e2e::mounts_under(world.paths.dir()).is_empty());
    let needle = world.paths.dir().to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline);
            assert!(
                !(cmdline.contains("berth-shim") && cmdline.contains(&needle)),
                "shim left: {cmdline}"
            );
        }
    }
    for controller in ["memory", "pids", "cpu", "unified"] {
        for id in ids {
            let dir = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join("berth-e2e")
                .join(id);
            assert!(!dir.exists(), "cgroup left: {}", dir.display());
        }
    }
    let state = std::fs::read_dir(&world.runtime.root)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        state,
        0,
        "runc state left in {}",
        world.runtime.root.display()
    );
}

#[test]
fn many_cycles_leak_nothing() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let mut ids = Vec::new();
    for i in 0..30 {
        let mut spec = world.spec(&["sleep", "1000"]);
        spec.resources.memory_limit = Some(64 << 20);
        let c = world.run(spec);
        if i % 2 == 0 {
            world
                .runtime
                .stop(
                    &c.id,
                    &c.run_dir,
                    StopSignal::parse("TERM").unwrap(),
                    Duration::ZERO,
                )
                .unwrap();
        }
        // Odd ones are removed while running: remove stops them.
        world.remove(&c);
        ids.push(c.id);
    }
    assert_no_leaks(&world, &ids);
}

#[test]
fn seccomp_devices_and_resources_reach_the_container() {
    if !can_run() {
        return;
    }
    use berth_runtime::seccomp::SeccompProfile;
    use berth_runtime::spec::Device;
    let world = World::new();
    // New user namespaces need no capability, so only the profile stops them.
    let c = world.run(world.spec(&["unshare", "-U", "true"]));
    assert_eq!(world.wait(&c).exit_code, 0, "{}", log(&c));
    world.remove(&c);
    let mut spec = world.spec(&["unshare", "-U", "true"]);
    spec.seccomp = SeccompProfile::RuntimeDefault;
    let c = world.run(spec);
    assert_ne!(world.wait(&c).exit_code, 0);
    assert!(log(&c).contains("Operation not permitted"), "{}", log(&c));
    world.remove(&c);

    let mut spec = world.spec(&["sh", "-c", "echo x > /dev/berth-null && echo wrote"]);
    spec.devices = vec![Device {
        host_path: "/dev/null".into(),
        container_path: "/dev/berth-null".into(),
        permissions: "rw".into(),
    }];
    let c = world.run(spec);
    assert_eq!(world.wait(&c).exit_code, 0, "{}", log(&c));
    assert!(log(&c).contains("stdout F wrote"));
    world.remove(&c);

    let mut spec = world.spec(&["sleep", "1000"]);
    spec.resources = Resources {
        cpu_shares: Some(512),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        pids_limit: Some(42),
        memory_limit: Some(32 << 20),
        ..Default::default()
    };
    let c = world.run(spec);
    let cgroup = |controller: &str, file: &str| {
        let path = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("berth-e2e")
            .join(&c.id)
            .join(file);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_string()
    };
    if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        assert_eq!(cgroup("pids", "pids.max"), "42");
        assert_eq!(cgroup("cpu", "cpu.shares"), "512");
        assert_eq!(cgroup("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(
            cgroup("memory", "memory.limit_in_bytes"),
            (32u64 << 20).to_string()
        );
    } else {
        assert_eq!(cgroup("", "pids.max"), "42");
        assert_eq!(cgroup("", "cpu.max"), "50000 100000");
        assert_eq!(cgroup("", "memory.max"), (32u64 << 20).to_string());
    }
    world.remove(&c);
}

#[test]
fn records_and_shims_survive_a_berthd_restart() {
    if !can_run() {
        return;
    }
    use berth_runtime::record::{ContainerRecord, ContainerState, RecordStore};
    let world = World::new();
    let store = RecordStore::open(&world.paths.dir().join("records")).unwrap();
    let mut containers = Vec::new();
    for i in 0..20 {
        let script = if i == 7 {
            "exit 9"
        } else {
            "echo up; exec sleep 1000"
        };
        let c = world.new_container(world.spec(&["sh", "-c", script]));
        let created = lifecycle::create(&world.runtime, &c).unwrap();
        world.runtime.start(&c.id).unwrap();
        store
            .save(&ContainerRecord {
                id: c.id.clone(),
                pod_id: "f".repeat(64),
                name: format!("c{i}"),
                attempt: 0,
                runtime_handler: "runc".into(),
                state: ContainerState::Running,
                created_at: 1,
                started_at: Some(2),
                exit: None,
                pid: created.pid,
                image: "busybox".into(),
                image_ref: "busybox".into(),
                image_id: "sha256:busybox".into(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                log_path: c.log_path.clone(),
                run_dir: c.run_dir.clone(),
                rootfs: lifecycle::rootfs_of(&c.run_dir),
                stop_signal: None,
                reserved_name: format!("k8s_c{i}"),
                state_dir: c.state_dir.clone(),
                tty: false,
                stdin: false,
                stdin_once: false,
                mounts: None,
                resources: None,
                legacy: serde_json::Value::Null,
                message: None,
            })
            .unwrap();
        containers.push(c);
    }
    // "berthd" is gone (nothing here holds the shims); one container exits meanwhile.
    world.wait(&containers[7]);
    let (records, errors) = store.load_all().unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(records.len(), 20);
    for record in &records {
        let i: usize = record.name[1..].parse().unwrap();
        if i == 7 {
            assert_eq!(record.state, ContainerState::Exited);
            assert_eq!(record.exit.unwrap().exit_code, 9);
            assert_eq!(record.reason(), Some("Error"));
        } else {
            assert_eq!(record.state, ContainerState::Running, "{}", record.name);
            // Its shim still serves: the log reopens, and the container runs.
            shim::control(&record.run_dir, "reopen").unwrap();
            assert!(berth_runtime::oci::shim_alive(&record.run_dir));
        }
    }
    for c in &containers {
        world.remove(c);
        store.remove(&c.id).unwrap();
    }
    let ids: Vec<String> = containers.into_iter().map(|c| c.id).collect();
    assert_no_leaks(&world, &ids);
}

#[test]
fn tty_takes_attach_input_and_resize() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let mut spec = world.spec(&["sh", "-c", "read x; echo size=$(stty size) got=$x"]);
    spec.tty = true;
    spec.stdin = true;
    let c = world.new_container(spec);
    lifecycle::create(&world.runtime, &c).unwrap();
    let mut attach = shim::connect_unix(&c.run_dir.join(shim::ATTACH_SOCKET)).unwrap();
    world.runtime.start(&c.id).unwrap();
    shim::control(&c.run_dir, "resize 33 77").unwrap();
    attach.write_all(b"hello\r").unwrap();
    assert_eq!(world.wait(&c).exit_code, 0, "{}", log(&c));
    let text = log(&c);
    assert!(text.contains("size=33 77 got=hello"), "{text}");
    let err = shim::control(&c.run_dir, "reopen").unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        ),
        "the control socket goes with the shim: {err}"
    );
    world.remove(&c);
}

#[test]
fn a_symlink_at_the_log_path_is_never_written_through() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let host_file = world.paths.dir().join("host-file");
    std::fs::write(&host_file, "untouched\n").unwrap();
    let host_text = || std::fs::read_to_string(&host_file).unwrap();

    // At start: create fails, naming the log file, and leaves nothing behind.
    let c = world.new_container(world.spec(&["echo", "hello"]));
    std::os::unix::fs::symlink(&host_file, &c.log_path).unwrap();
    let err = lifecycle::create(&world.runtime, &c)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("open log file") && err.contains(c.log_path.to_str().unwrap()),
        "{err}"
    );
    assert!(!c.run_dir.exists());
    assert!(berth_e2e::mounts_under(world.paths.dir()).is_empty());
    assert_eq!(host_text(), "untouched\n");

    // On reopen: refused with a clear answer; output keeps going to the
    // file the shim had open.
    let c = world.run(world.spec(&[
        "sh",
        "-c",
        "i=0; while true; do echo line$i; i=$((i+1)); usleep 1000; done",
    ]));
    let lines = |path: &Path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let wait_lines = |path: &Path, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while lines(path) < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} lines in {path:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_lines(&c.log_path, 20);
    let rotated = c.log_path.with_extension("log.1");
    std::fs::rename(&c.log_path, &rotated).unwrap();
    std::os::unix::fs::symlink(&host_file, &c.log_path).unwrap();
    let err = shim::control(&c.run_dir, "reopen").unwrap_err().to_string();
    assert!(
        err.contains("reopen log file") && err.contains(c.log_path.to_str().unwrap()),
        "{err}"
    );
    assert!(shim_log(&c).contains("reopen log file"), "{}", shim_log(&c));
    let before = lines(&rotated);
    wait_lines(&rotated, before + 20);
    assert_eq!(host_text(), "untouched\n");
    // Once the path is fixed, a reopen works again.
    std::fs::remove_file(&c.log_path).unwrap();
    shim::control(&c.run_dir, "reopen").unwrap();
    wait_lines(&c.log_path, 5);
    world
        .runtime
        .stop(
            &c.id,
            &c.run_dir,
            StopSignal::parse("KILL").unwrap(),
            Duration::ZERO,
        )
        .unwrap();
    assert_eq!(host_text(), "untouched\n");
    world.remove(&c);
}
