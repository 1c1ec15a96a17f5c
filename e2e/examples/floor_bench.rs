//! The floor of a pod's start on this machine: the work no runtime can
//! skip, done bare, COUNT times one after another. Per pod:
//! - `namespaces`: new net, ipc and uts namespaces, pinned by bind mounts;
//! - `cni_add`: the conflist's plugins exec'd in turn with ADD;
//! - `overlay`: the container's rootfs, an overlay on the unpacked image;
//! - `runc_create`, `runc_start`: runc on a bundle whose config.json is
//!   TEMPLATE (a berthd bundle's), pointed at this pod's namespaces, rootfs
//!   and cgroup.
//!
//! Writable layers go under STATE, bundles, pins and runc's state under RUN
//! (a tmpfs, as a node's /run), where berthd keeps the same things.
//!
//! usage: floor_bench COUNT STATE RUN CONFLIST TEMPLATE IMAGE_ROOTFS
//! prints, per part: floor PART p50_ms=.. p90_ms=.. n=..
//! then tears every pod down (not timed).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use serde_json::{Value, json};

const CNI_BIN: &str = "/usr/lib/cni";
const PARTS: [&str; 5] = [
    "namespaces",
    "cni_add",
    "overlay",
    "runc_create",
    "runc_start",
];

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// New namespaces on a thread of their own, pinned under `dir`.
fn namespaces(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    std::fs::create_dir_all(dir).expect("namespace dir");
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
            .expect("unshare");
        let mut pins = Vec::new();
        for kind in ["net", "ipc", "uts"] {
            let pin = dir.join(kind);
            std::fs::File::create(&pin).expect("pin file");
            let source = format!("/proc/thread-self/ns/{kind}");
            mount(
                Some(source.as_str()),
                &pin,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .expect("pin namespace");
            pins.push((kind, pin));
        }
        pins
    })
    .join()
    .expect("namespace thread")
}

/// Runs the conflist's plugins with `command`; ADD's results chain.
fn cni(conflist: &Value, command: &str, id: &str, netns: &Path) {
    let mut prev: Option<Value> = None;
    let mut plugins: Vec<Value> = conflist["plugins"].as_array().expect("plugins").clone();
    if command == "DEL" {
        plugins.reverse();
    }
    for mut plugin in plugins {
        plugin["name"] = conflist["name"].clone();
        plugin["cniVersion"] = conflist["cniVersion"].clone();
        if plugin.get("capabilities").is_some() {
            plugin["runtimeConfig"] = json!({ "portMappings": [] });
        }
        if let Some(prev) = &prev {
            plugin["prevResult"] = prev.clone();
        }
        let kind = plugin["type"].as_str().expect("type").to_string();
        let mut child = Command::new(Path::new(CNI_BIN).join(&kind))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_BIN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a CNI plugin");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&serde_json::to_vec(&plugin).expect("json"))
            .expect("write the plugin's config");
        let out = child.wait_with_output().expect("CNI plugin");
        assert!(
            out.status.success(),
            "{kind} {command}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        if command == "ADD" {
            prev = Some(serde_json::from_slice(&out.stdout).expect("CNI result"));
        }
    }
}

fn overlay(lower: &Path, state: &Path, bundle: &Path) -> PathBuf {
    let (upper, work) = (state.join("upper"), state.join("work"));
    let rootfs = bundle.join("rootfs");
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(d).expect("overlay dir");
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .expect("mount overlay");
    rootfs
}

/// TEMPLATE pointed at this pod: its namespaces, rootfs and cgroup, and
/// stand-ins under `dir` for bind sources that went with berthd's pod.
fn bundle_config(
    template: &Value,
    dir: &Path,
    rootfs: &Path,
    pins: &[(&str, PathBuf)],
    i: usize,
) -> Value {
    let mut config = template.clone();
    config["root"] = json!({ "path": rootfs, "readonly": false });
    config["linux"]["cgroupsPath"] = json!(format!("/berth-floor/pod-{i}"));
    for ns in config["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
    {
        if let Some((_, pin)) = pins.iter().find(|(kind, _)| ns["type"] == *kind) {
            ns["path"] = json!(pin);
        } else if let Some(map) = ns.as_object_mut() {
            map.remove("path");
        }
    }
    for (n, mount) in config["mounts"]
        .as_array_mut()
        .expect("mounts")
        .iter_mut()
        .enumerate()
    {
        let Some(source) = mount["source"].as_str() else {
            continue;
        };
        if !source.starts_with('/') || Path::new(source).exists() {
            continue;
        }
        let stand_in = dir.join(format!("mount-{n}"));
        if mount["destination"] == "/dev/shm" {
            std::fs::create_dir_all(&stand_in).expect("stand-in dir");
        } else {
            std::fs::write(&stand_in, b"").expect("stand-in file");
        }
        mount["source"] = json!(stand_in);
    }
    config
}

fn runc(root: &Path, args: &[&str]) {
    let status = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("run runc");
    assert!(status.success(), "runc {args:?}: {status}");
}

/// Prints the part's p50 and p90; its p50.
fn report(part: &str, values: &[f64]) -> f64 {
    let [p50, p90] = berth_e2e::quantiles(values.to_vec(), [0.5, 0.9]);
    println!(
        "floor {part} p50_ms={p50:.2} p90_ms={p90:.2} n={}",
        values.len()
    );
    p50
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!("usage: floor_bench COUNT STATE RUN CONFLIST TEMPLATE IMAGE_ROOTFS");
        std::process::exit(2);
    }
    let count: usize = args[1].parse().expect("COUNT is a number");
    let (state, run) = (PathBuf::from(&args[2]), PathBuf::from(&args[3]));
    let read = |path: &str| -> Value {
        serde_json::from_slice(&std::fs::read(path).expect(path)).expect(path)
    };
    let (conflist, template) = (read(&args[4]), read(&args[5]));
    let lower = PathBuf::from(&args[6]);
    let runc_root = run.join("runc");
    let mut timings: Vec<Vec<f64>> = vec![Vec::new(); PARTS.len()];
    let mut pods = Vec::new();
    // Pod 0 warms caches and is not counted.
    for i in 0..=count {
        let dir = run.join(format!("pod-{i}"));
        let id = format!("floor-{i}");
        let t = Instant::now();
        let pins = namespaces(&dir.join("ns"));
        let took_ns = ms(t);
        let t = Instant::now();
        cni(&conflist, "ADD", &id, &pins[0].1);
        let took_cni = ms(t);
        let t = Instant::now();
        let rootfs = overlay(&lower, &state.join(format!("pod-{i}")), &dir);
        let took_overlay = ms(t);
        let config = bundle_config(&template, &dir, &rootfs, &pins, i);
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec(&config).expect("json"),
        )
        .expect("write config.json");
        let bundle = dir.display().to_string();
        let t = Instant::now();
        runc(&runc_root, &["create", "--bundle", &bundle, &id]);
        let took_create = ms(t);
        let t = Instant::now();
        runc(&runc_root, &["start", &id]);
        let took_start = ms(t);
        if i > 0 {
            let took = [took_ns, took_cni, took_overlay, took_create, took_start];
            for (all, took) in timings.iter_mut().zip(took) {
                all.push(took);
            }
        }
        pods.push((id, dir, pins));
    }
    let sum: f64 = PARTS
        .iter()
        .zip(&timings)
        .map(|(part, values)| report(part, values))
        .sum();
    println!("floor total p50_ms={sum:.2} n={count}");
    for (id, dir, pins) in pods {
        runc(&runc_root, &["delete", "--force", &id]);
        cni(&conflist, "DEL", &id, &pins[0].1);
        let _ = umount2(&dir.join("rootfs"), MntFlags::MNT_DETACH);
        for (_, pin) in &pins {
            let _ = umount2(pin, MntFlags::MNT_DETACH);
        }
    }
}
