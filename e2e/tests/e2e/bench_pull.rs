//! The pull benchmark (run by `hack/bench-pull.sh`, ignored otherwise): the
//! `big` fixture (8 layers, 256 MiB unpacked) pulled and unpacked from the
//! same local docker-registry by containerd (`ctr image pull`, its own
//! root, overlayfs snapshotter) and by berthd, in the same run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::registry::{self, Registry, Security};
use berth_e2e::{Berthd, Options};

fn warm(dir: &Path) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find {} -type f -exec cat {{}} + >/dev/null",
            dir.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
}

fn containerd_pull(image: &str) -> Duration {
    let dir = tempfile::Builder::new()
        .prefix("berth-bench-containerd-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let socket = d.join("containerd.sock");
    std::fs::write(
        d.join("config.toml"),
        format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\naddress = \"{}\"\n",
            d.join("root").display(),
            d.join("state").display(),
            socket.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("containerd.log")).unwrap();
    let mut containerd = Command::new("containerd")
        .arg("--config")
        .arg(d.join("config.toml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "containerd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    let out = Command::new("ctr")
        .arg("--address")
        .arg(&socket)
        .args(["-n", "bench", "images", "pull", "--plain-http", image])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "ctr pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = containerd.kill();
    let _ = containerd.wait();
    berth_e2e::kill_processes_under(d);
    for mount in berth_e2e::mounts_under(d) {
        let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
    }
    took
}

fn peak_rss_kib(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run hack/bench-pull.sh"]
async fn pull_benchmark_vs_containerd() {
    let layout = registry::big_fixtures();
    let reg = Registry::start_empty(Security::Plain);
    reg.push_from(layout, "big", "berth/big:latest");
    let image = reg.image("big");
    warm(&reg.storage());

    let conf = tempfile::tempdir().unwrap();
    let registries = conf.path().join("registries.conf");
    std::fs::write(&registries, berth_e2e::registry::insecure_conf(&reg.host())).unwrap();
    let berthd = Berthd::start_with(Options {
        config: format!(
            "log_level = \"warn\"\n[image]\nregistries_config = \"{}\"\n",
            registries.display()
        ),
        ..Options::default()
    })
    .await;
    let mut images = berthd.images().await;

    let containerd = containerd_pull(&image);
    let start = Instant::now();
    berth_e2e::pull(&mut images, &image).await.unwrap();
    let berth = start.elapsed();
    let rss = peak_rss_kib(berthd.pid());
    // The whole image really is there.
    let pulled = berth_e2e::image_status(&mut images, &image).await.unwrap();
    assert!(pulled.size >= 256 << 20, "{}", pulled.size);
    println!("BENCH pull of {image} (8 layers, 256 MiB unpacked, ~130 MiB gzip)");
    println!("BENCH containerd: {:.2} s", containerd.as_secs_f64());
    println!("BENCH berthd:     {:.2} s", berth.as_secs_f64());
    println!(
        "BENCH ratio containerd/berthd: {:.2}x (berthd throughput relative to containerd)",
        containerd.as_secs_f64() / berth.as_secs_f64()
    );
    println!("BENCH berthd peak RSS: {:.1} MiB", rss as f64 / 1024.0);
}
