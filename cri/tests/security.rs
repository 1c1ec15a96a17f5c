//! The security context against real runc: CRI requests converted by
//! `berth_cri::container::convert` (what berthd's CreateContainer calls), run through
//! berth-shim, and checked from inside the container.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_cri::RequestError;
use berth_cri::container::{self as cri_spec, Options, PodFacts};
use berth_e2e::bundles::Bundles;
use berth_proto::cri;
use berth_runtime::lifecycle::{self, NewContainer};
use berth_runtime::oci::wait_exit;
use berth_runtime::spec::{ContainerSpec, ImageConfig, Namespace, PodFiles};

fn can_run() -> bool {
    berth_e2e::can_run(
        berth_e2e::is_root()
            && berth_e2e::have_command("runc")
            && Path::new("/bin/busybox").exists(),
        "needs root, runc and busybox-static",
    )
}

/// [`Bundles`] whose layer also has a setuid-root busybox and more groups.
struct World(Bundles);

impl std::ops::Deref for World {
    type Target = Bundles;
    fn deref(&self) -> &Bundles {
        &self.0
    }
}

impl World {
    fn new() -> World {
        let bundles =
            Bundles::new("root:x:0:\ntester:x:1234:\nextra:x:5000:tester\nother:x:6000:\n");
        // Non-root container users must reach the layer.
        std::fs::set_permissions(
            bundles.paths.dir(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        // A setuid-root busybox (see no_new_privs_stops_setuid).
        let suid = bundles.layer.join("bin/busybox-suid");
        std::fs::copy("/bin/busybox", &suid).unwrap();
        std::fs::set_permissions(&suid, std::os::unix::fs::PermissionsExt::from_mode(0o4755))
            .unwrap();
        World(bundles)
    }

    fn pod() -> PodFacts {
        PodFacts {
            network: Namespace::New,
            ipc: Namespace::New,
            uts: Namespace::New,
            pid: Some(Namespace::New),
            user: None,
            cgroup_parent: PathBuf::new(),
            files: PodFiles::default(),
            hostname: "sectest".into(),
            sysctls: Default::default(),
            privileged: false,
            log_directory: PathBuf::new(),
        }
    }

    /// Converts `sc` for a container running `script` in `sh -c`.
    fn convert(
        &self,
        script: &str,
        sc: cri::LinuxContainerSecurityContext,
        edit: impl FnOnce(&mut cri::ContainerConfig, &mut PodFacts, &mut Options),
    ) -> Result<ContainerSpec, RequestError> {
        let mut config = cri::ContainerConfig {
            command: vec!["sh".into(), "-c".into(), script.into()],
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(sc),
                resources: None,
            }),
            ..Default::default()
        };
        let mut pod = World::pod();
        let mut options = Options::new("unused");
        options.features = berth_runtime::features::probe(Path::new("runc"));
        edit(&mut config, &mut pod, &mut options);
        cri_spec::convert(&config, &ImageConfig::default(), &pod, &options).map(|c| c.spec)
    }

    /// Runs to the end; the exit code and stdout+stderr text.
    fn output(&self, spec: ContainerSpec) -> (i32, String) {
        let (c, _) = self.start(spec);
        let exit = wait_exit(&c.run_dir, Duration::from_secs(60))
            .unwrap()
            .expect("container exits");
        let text = std::fs::read_to_string(&c.log_path).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .collect();
        self.remove(&c);
        (exit.exit_code, lines.join("\n"))
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn status_field(text: &str, field: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {text}"))
        .trim()
        .to_string()
}

fn mask(names: &[&str]) -> u64 {
    names
        .iter()
        .map(|n| 1u64 << berth_runtime::spec::capability_bit(n).unwrap())
        .fold(0, |a, b| a | b)
}

fn own_bounding() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    u64::from_str_radix(&status_field(&status, "CapBnd"), 16).unwrap()
}

const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
];

#[test]
fn capability_sets_in_proc_status() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let caps_sc =
        |add: &[&str], drop: &[&str], ambient: &[&str]| cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: strings(add),
                drop_capabilities: strings(drop),
                add_ambient_capabilities: strings(ambient),
            }),
            ..Default::default()
        };
    let script = "grep ^Cap /proc/self/status";
    let read = |mut sc: cri::LinuxContainerSecurityContext, privileged: bool| {
        sc.privileged = privileged;
        let spec = world
            .convert(script, sc, |_, pod, _| pod.privileged = privileged)
            .unwrap();
        let (code, text) = world.output(spec);
        assert_eq!(code, 0, "{text}");
        let hex = |f| u64::from_str_radix(&status_field(&text, f), 16).unwrap();
        (hex("CapEff"), hex("CapBnd"), hex("CapAmb"))
    };
    let all = own_bounding();
    let default = mask(DEFAULT_CAPS);
    assert_eq!(read(Default::default(), false), (default, default, 0));
    let added = (default | mask(&["CAP_NET_ADMIN"])) & !mask(&["CAP_CHOWN"]);
    assert_eq!(
        read(caps_sc(&["NET_ADMIN"], &["chown"], &[]), false),
        (added, added, 0)
    );
    let only = mask(&["CAP_NET_RAW"]);
    assert_eq!(
        read(caps_sc(&["CAP_NET_RAW"], &["ALL"], &[]), false),
        (only, only, 0)
    );
    let nearly = all & !mask(&["CAP_SYS_ADMIN"]);
    assert_eq!(
        read(caps_sc(&["ALL"], &["SYS_ADMIN"], &[]), false),
        (nearly, nearly, 0)
    );
    assert_eq!(read(Default::default(), true), (all, all, 0));
    // Privileged: every capability whatever the request drops.
    assert_eq!(read(caps_sc(&[], &["ALL"], &[]), true), (all, all, 0));
    // A non-root user keeps an ambient capability across exec.
    let mut sc = caps_sc(&[], &["ALL"], &["NET_BIND_SERVICE"]);
    sc.run_as_user = Some(cri::Int64Value { value: 1234 });
    let bind = mask(&["CAP_NET_BIND_SERVICE"]);
    assert_eq!(read(sc, false), (bind, bind, bind));
}

#[test]
fn seccomp_profiles() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let profile = |t: i32, r: &str| cri::LinuxContainerSecurityContext {
        seccomp: Some(cri::SecurityProfile {
            profile_type: t,
            localhost_ref: r.into(),
        }),
        ..Default::default()
    };
    // New user namespaces need no capability: only the profile stops them.
    let unshare = "unshare -U true && echo unshared";
    let (code, text) = world.output(
        world
            .convert(unshare, profile(0, ""), |_, _, _| {})
            .unwrap(),
    );
    assert_ne!(code, 0);
    assert!(text.contains("Operation not permitted"), "{text}");
    // No profile asked for: unconfined, as the CRI says ...
    let (code, text) = world.output(
        world
            .convert(unshare, Default::default(), |_, _, _| {})
            .unwrap(),
    );
    assert_eq!((code, text.as_str()), (0, "unshared"));
    // ... or RuntimeDefault with seccomp_use_default_when_empty.
    let (code, _) = world.output(
        world
            .convert(unshare, Default::default(), |_, _, options| {
                options.default_seccomp = berth_cri::container::DefaultSeccomp::RuntimeDefault;
            })
            .unwrap(),
    );
    assert_ne!(code, 0);
    let (code, text) = world.output(
        world
            .convert(unshare, profile(1, ""), |_, _, _| {})
            .unwrap(),
    );
    assert_eq!((code, text.as_str()), (0, "unshared"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-mkdir.json");
    std::fs::write(
        &path,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .unwrap();
    let (code, text) = world.output(
        world
            .convert(
                "mkdir /tmp/d",
                profile(2, path.to_str().unwrap()),
                |_, _, _| {},
            )
            .unwrap(),
    );
    assert_ne!(code, 0);
    assert!(text.contains("Operation not permitted"), "{text}");
    let missing = dir.path().join("missing.json");
    let err = world
        .convert("true", profile(2, missing.to_str().unwrap()), |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
}

/// A static probe that makes the syscalls busybox cannot, each in a child
/// of its own (so a successful `unshare` changes nothing else), and prints
/// `<name>=<errno>` per call, 0 for success.
const SYSPROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static long call(const char *name) {
    if (!strcmp(name, "io_uring_setup")) return syscall(SYS_io_uring_setup, 1, 0);
    if (!strcmp(name, "unshare_user")) return syscall(SYS_unshare, CLONE_NEWUSER);
    if (!strcmp(name, "keyctl")) return syscall(SYS_keyctl, 0, -3, 0);
    if (!strcmp(name, "bpf")) return syscall(SYS_bpf, 0, 0, 0);
    if (!strcmp(name, "perf_event_open")) return syscall(SYS_perf_event_open, 0, 0, -1, -1, 0);
    /* No syscall has this number on x86_64 or arm64, and it is below the
       highest one the profile names (above that, runc answers ENOSYS). */
    if (!strcmp(name, "unknown")) return syscall(400);
    if (!strcmp(name, "clone")) return syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (!strcmp(name, "clone_newuser")) return syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (!strcmp(name, "clone_newns")) return syscall(SYS_clone, CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0);
    if (!strcmp(name, "clone3")) return syscall(SYS_clone3, 0, 0);
    if (!strcmp(name, "getpid")) return syscall(SYS_getpid);
    errno = EINVAL;
    return -2;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        fflush(stdout);
        pid_t child = fork();
        if (child == 0) {
            long ret = call(argv[i]);
            int err = ret < 0 ? errno : 0;
            if (ret == 0 && !strncmp(argv[i], "clone", 5)) _exit(0);
            if (ret > 0 && !strncmp(argv[i], "clone", 5)) waitpid(ret, 0, 0);
            printf("%s=%d\n", argv[i], ret == -2 ? -1 : err);
            fflush(stdout);
            _exit(0);
        }
        waitpid(child, 0, 0);
    }
    return 0;
}
"#;

const PROBES: &[&str] = &[
    "io_uring_setup",
    "unshare_user",
    "keyctl",
    "bpf",
    "perf_event_open",
    "unknown",
    "clone",
    "clone_newuser",
    "clone_newns",
    "clone3",
    "getpid",
];

/// Builds the probe into the layer's `/bin/sysprobe`; false without a C
/// compiler (cargo itself links with `cc`, so it is there wherever we build).
fn build_sysprobe(world: &World) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("sysprobe.c");
    std::fs::write(&source, SYSPROBE_C).unwrap();
    let out = std::process::Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(world.layer.join("bin/sysprobe"))
        .arg(&source)
        .output();
    match out {
        Ok(out) if out.status.success() => true,
        Ok(out) => panic!(
            "cc -static sysprobe.c: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => berth_e2e::can_run(false, &format!("needs cc for the syscall probe: {err}")),
    }
}

#[test]
fn runtime_default_is_an_allow_list_refusing_with_eperm() {
    if !can_run() {
        return;
    }
    let world = World::new();
    if !build_sysprobe(&world) {
        return;
    }
    let run = |profile_type: i32, add_caps: &[&str]| -> HashMap<String, i32> {
        let sc = cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type,
                localhost_ref: String::new(),
            }),
            capabilities: Some(cri::Capability {
                add_capabilities: strings(add_caps),
                ..Default::default()
            }),
            ..Default::default()
        };
        let script = format!("sysprobe {}", PROBES.join(" "));
        let (code, text) = world.output(world.convert(&script, sc, |_, _, _| {}).unwrap());
        assert_eq!(code, 0, "{text}");
        let results: HashMap<String, i32> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect();
        assert_eq!(results.len(), PROBES.len(), "{text}");
        results
    };
    const EPERM: i32 = 1;
    const ENOSYS: i32 = 38;
    // RuntimeDefault, with CRI-O's default capabilities.
    let confined = run(0, &[]);
    for refused in [
        "io_uring_setup",
        "unshare_user",
        "keyctl",
        "bpf",
        "perf_event_open",
        "unknown",
        "clone_newuser",
        "clone_newns",
    ] {
        assert_eq!(confined[refused], EPERM, "{refused}: {confined:?}");
    }
    assert_eq!(confined["clone3"], ENOSYS, "{confined:?}");
    assert_eq!(
        (confined["clone"], confined["getpid"]),
        (0, 0),
        "{confined:?}"
    );

    // Unconfined, the same calls reach the kernel: the EPERMs above are the
    // profile's.
    let unconfined = run(1, &[]);
    assert_eq!(unconfined["unknown"], ENOSYS, "{unconfined:?}");
    assert_ne!(unconfined["io_uring_setup"], EPERM, "{unconfined:?}");
    assert_ne!(unconfined["clone3"], ENOSYS, "{unconfined:?}");
    assert_eq!(unconfined["unshare_user"], 0, "{unconfined:?}");

    // CAP_SYS_ADMIN unlocks namespaces, in clone too, and the real clone3.
    let admin = run(0, &["SYS_ADMIN"]);
    for unlocked in ["unshare_user", "clone_newuser", "clone_newns", "clone"] {
        assert_eq!(admin[unlocked], 0, "{unlocked}: {admin:?}");
    }
    assert_ne!(admin["clone3"], ENOSYS, "{admin:?}");
    assert_eq!(admin["io_uring_setup"], EPERM, "{admin:?}");
    assert_eq!(admin["unknown"], EPERM, "{admin:?}");

    // A busybox workload runs as before.
    let workload = "set -e; mkdir -p /tmp/w/d; cd /tmp/w; echo data > f; cat f >/dev/null; \
                    chmod 600 f; chown 1234:1234 f; ln -s f l; readlink l >/dev/null; \
                    cp f d/g; mv d/g d/h; ls -la d >/dev/null; tar cf t.tar f d; \
                    rm -r d; tar xf t.tar; sha256sum f >/dev/null; find . >/dev/null; \
                    (sleep 0.1 &) ; wait; ps >/dev/null; date >/dev/null; id >/dev/null; \
                    hostname >/dev/null; df / >/dev/null; touch -d 2020-01-01 f; \
                    echo x | awk '{print $1}' | sed s/x/y/ | grep -q y; \
                    kill -0 $$; ulimit -n >/dev/null; uname -a >/dev/null; echo workload-ok";
    let (code, text) = world.output(
        world
            .convert(workload, Default::default(), |_, _, _| {})
            .unwrap(),
    );
    assert_eq!((code, text.as_str()), (0, "workload-ok"));
}

#[test]
fn no_new_privs_stops_setuid() {
    if !can_run() {
        return;
    }
    let world = World::new();
    // busybox drops a setuid privilege unless its config keeps it for the
    // applet; the config is mounted for this test only (with it, busybox's
    // `id` crashes for non-root users).
    let conf = world.paths.dir().join("busybox.conf");
    std::fs::write(&conf, "[SUID]\nhead = ssx root.root\n").unwrap();
    let script = "cat /proc/self/status | grep -e NoNewPrivs -e ^Uid; \
                  busybox-suid head -n 20 /proc/self/status | grep ^Uid | sed s/^/suid-/; true";
    let run = |nnp: bool| {
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1234 }),
            no_new_privs: nnp,
            ..Default::default()
        };
        let spec = world
            .convert(script, sc, |config, _, _| {
                config.mounts = vec![cri::Mount {
                    container_path: "/etc/busybox.conf".into(),
                    host_path: conf.to_str().unwrap().into(),
                    readonly: true,
                    ..Default::default()
                }];
            })
            .unwrap();
        let (code, text) = world.output(spec);
        assert_eq!(code, 0, "{text}");
        text
    };
    // Uid: real, effective, saved, filesystem.
    let text = run(true);
    assert_eq!(status_field(&text, "NoNewPrivs"), "1");
    assert_eq!(status_field(&text, "Uid"), "1234\t1234\t1234\t1234");
    assert!(!text.contains("suid-"), "{text}");
    // The same binary does raise privileges without it: the check above means something.
    let text = run(false);
    assert_eq!(status_field(&text, "NoNewPrivs"), "0");
    assert_eq!(status_field(&text, "suid-Uid"), "1234\t0\t0\t0", "{text}");
}

#[test]
fn masked_paths_and_unmasking() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let script =
        "wc -c < /proc/timer_list; echo 1 > /proc/sys/kernel/shm_rmid_forced && echo wrote";
    let run = |masked: &[&str], readonly: &[&str]| {
        let sc = cri::LinuxContainerSecurityContext {
            masked_paths: strings(masked),
            readonly_paths: strings(readonly),
            ..Default::default()
        };
        world
            .output(world.convert(script, sc, |_, _, _| {}).unwrap())
            .1
    };
    let size = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no size in {text}"))
    };
    let text = run(&["/proc/timer_list", "/proc/kcore"], &["/proc/sys"]);
    assert_eq!(size(&text), 0, "{text}");
    assert!(text.contains("Read-only file system"), "{text}");
    let text = run(&[], &[]);
    assert!(size(&text) > 0, "{text}");
    assert!(!text.contains("Read-only file system"), "{text}");
}

#[test]
fn users_groups_and_policies() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let script = "echo $(id -u) $(id -g) $(id -G | tr ' ' '\\n' | sort -n | tr '\\n' ' ')";
    let run = |image_user: &str, sc: cri::LinuxContainerSecurityContext| {
        let mut spec = world.convert(script, sc, |_, _, _| {}).unwrap();
        spec.image.user = image_user.into();
        let (code, text) = world.output(spec);
        assert_eq!(code, 0, "{text}");
        text.trim().to_string()
    };
    let sc = |user: Option<i64>, name: &str, group: Option<i64>, supp: &[i64], strict: bool| {
        cri::LinuxContainerSecurityContext {
            run_as_user: user.map(|value| cri::Int64Value { value }),
            run_as_username: name.into(),
            run_as_group: group.map(|value| cri::Int64Value { value }),
            supplemental_groups: supp.to_vec(),
            supplemental_groups_policy: i32::from(strict),
            ..Default::default()
        }
    };
    let none = || sc(None, "", None, &[], false);
    assert_eq!(run("", none()), "0 0 0");
    assert_eq!(run("tester", none()), "1234 1234 1234 5000");
    assert_eq!(run("1234", none()), "1234 1234 1234 5000");
    assert_eq!(run("1234:6000", none()), "1234 6000 5000 6000");
    assert_eq!(run("tester:other", none()), "1234 6000 5000 6000");
    assert_eq!(
        run("", sc(None, "tester", None, &[], false)),
        "1234 1234 1234 5000"
    );
    // CRI fields win over the image, the image's group with its user.
    assert_eq!(
        run("0:6000", sc(Some(1234), "", None, &[], false)),
        "1234 1234 1234 5000"
    );
    assert_eq!(
        run("", sc(Some(1234), "", Some(42), &[77], false)),
        "1234 42 42 77 5000"
    );
    assert_eq!(
        run("", sc(Some(1234), "", Some(42), &[77], true)),
        "1234 42 42 77"
    );
    assert_eq!(
        run("tester", sc(None, "", None, &[], true)),
        "1234 1234 1234"
    );
    // A uid the image does not know: gid 0.
    assert_eq!(run("", sc(Some(4321), "", None, &[], false)), "4321 0 0");

    // ContainerStatus.user comes from the created spec.
    let mut spec = world
        .convert("true", sc(Some(1234), "", None, &[77], false), |_, _, _| {})
        .unwrap();
    spec.image.user = String::new();
    let c = world.new_container(spec);
    let created = lifecycle::create(&world.runtime, &c).unwrap();
    let user = berth_cri::container_status::container_user(&created.spec)
        .unwrap()
        .linux
        .unwrap();
    assert_eq!((user.uid, user.gid), (1234, 1234));
    // The primary group too, as the process has it (and `id -G` says).
    assert_eq!(user.supplemental_groups, [1234, 5000, 77]);
    world.remove(&c);
}

#[test]
fn recursive_read_only_mounts() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let features = berth_runtime::features::probe(Path::new("runc"));
    let host = world.paths.dir().join("vol");
    let sub = host.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(sub.clone());
    let script =
        "touch /data/top && echo top-written; touch /data/sub/deep && echo deep-written; true";
    let run = |rro: bool| {
        world.convert(script, Default::default(), |config, _, _| {
            config.mounts = vec![cri::Mount {
                container_path: "/data".into(),
                host_path: host.to_str().unwrap().into(),
                readonly: true,
                recursive_read_only: rro,
                ..Default::default()
            }];
        })
    };
    // Plain read-only: the nested mount stays writable.
    let (_, text) = world.output(run(false).unwrap());
    assert!(
        !text.contains("top-written") && text.contains("deep-written"),
        "{text}"
    );
    if !features.recursive_read_only_mounts {
        let err = run(true).unwrap_err().to_string();
        assert!(err.contains("recursive_read_only"), "{err}");
        return;
    }
    let (_, text) = world.output(run(true).unwrap());
    assert!(!text.contains("written"), "{text}");
    assert_eq!(text.matches("Read-only file system").count(), 2, "{text}");
}

#[test]
fn pid_namespace_modes() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let ns = |pid: i32, target: &str| cri::LinuxContainerSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            pid,
            target_id: target.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ps = "ps -o args | grep -v -e '^ps' -e grep -e '^PID' -e '^COMMAND'";
    // A container with the pod's (here another container's) namespace sees its processes.
    let (peer, peer_pid) = world.start(
        world
            .convert("exec sleep 1000", ns(1, ""), |_, _, _| {})
            .unwrap(),
    );
    let peer_ns = PathBuf::from(format!("/proc/{peer_pid}/ns/pid"));
    let (_, text) = world.output(world.convert(ps, ns(1, ""), |_, _, _| {}).unwrap());
    assert!(
        !text.contains("sleep 1000"),
        "CONTAINER sees only itself: {text}"
    );
    let pod_ns = peer_ns.clone();
    let (_, text) = world.output(
        world
            .convert(ps, ns(0, ""), |_, pod, _| {
                pod.pid = Some(Namespace::Path(pod_ns))
            })
            .unwrap(),
    );
    assert!(text.contains("sleep 1000"), "POD sees the pod's: {text}");
    let (_, text) = world.output(
        world
            .convert(ps, ns(3, &peer.id), |_, _, options| {
                options.target_pid_namespace = Some(peer_ns)
            })
            .unwrap(),
    );
    assert!(
        text.contains("sleep 1000"),
        "TARGET sees the target's: {text}"
    );
    let (_, text) = world.output(
        world
            .convert("cat /proc/1/comm", ns(2, ""), |_, _, _| {})
            .unwrap(),
    );
    assert!(!text.contains("sh"), "NODE sees the host's init: {text}");
    world.remove(&peer);
}

#[test]
fn pod_sysctls() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let with = |sysctls: &[(&str, &str)]| {
        world.convert(
            "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shm_rmid_forced",
            Default::default(),
            |_, pod, _| {
                pod.sysctls = sysctls
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            },
        )
    };
    // The pod record's OCI form: the runtime writes each inside the container.
    let (code, text) = world.output(
        with(&[
            ("net.ipv4.ip_unprivileged_port_start", "555"),
            ("kernel.shm_rmid_forced", "1"),
        ])
        .unwrap(),
    );
    assert_eq!((code, text.as_str()), (0, "555\n1"));
}

#[test]
fn privileged_gets_host_devices_and_writable_sys() {
    if !can_run() {
        return;
    }
    let world = World::new();
    let script = "ls /dev | wc -l; grep -E ' /sys(/fs/cgroup)? ' /proc/mounts | cut -d' ' -f2,4 | cut -d, -f1; \
                  cat /proc/self/status | grep Seccomp:";
    let run = |privileged: bool| {
        // RuntimeDefault, as the kubelet asks: privileged drops it.
        let sc = cri::LinuxContainerSecurityContext {
            privileged,
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        };
        let spec = world
            .convert(script, sc, |_, pod, _| pod.privileged = true)
            .unwrap();
        let (code, text) = world.output(spec);
        assert_eq!(code, 0, "{text}");
        text
    };
    let host_devices = std::fs::read_dir("/dev").unwrap().count();
    let text = run(true);
    let devices: usize = text.lines().next().unwrap().trim().parse().unwrap();
    assert!(
        devices > host_devices / 2,
        "{devices} of {host_devices}: {text}"
    );
    assert!(text.contains("/sys rw"), "{text}");
    assert!(text.contains("/sys/fs/cgroup rw"), "{text}");
    assert_eq!(status_field(&text, "Seccomp"), "0");
    let text = run(false);
    let devices: usize = text.lines().next().unwrap().trim().parse().unwrap();
    assert!(devices < 20, "{text}");
    assert!(text.contains("/sys ro"), "{text}");
    assert_eq!(status_field(&text, "Seccomp"), "2");
}

/// A tmpfs mounted for one test, unmounted (lazily) at the end.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: PathBuf) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn mount_propagation_and_symlinked_host_paths() {
    if !can_run() {
        return;
    }
    let world = World::new();
    // A private mount of its own, so that only it is made shared.
    let vol = Tmpfs::mount(world.paths.dir().join("vol"));
    std::fs::write(vol.0.join("hello"), "hi\n").unwrap();
    std::os::unix::fs::symlink(&vol.0, world.paths.dir().join("link")).unwrap();
    let start = |propagation: i32| {
        let spec = world
            .convert(
                "exec sleep 1000",
                cri::LinuxContainerSecurityContext {
                    privileged: propagation == 2,
                    ..Default::default()
                },
                |config, pod, _| {
                    pod.privileged = true;
                    config.mounts = vec![cri::Mount {
                        container_path: "/data".into(),
                        // The CRI asks for a symlink's target to be mounted.
                        host_path: world.paths.dir().join("link").to_str().unwrap().into(),
                        propagation,
                        ..Default::default()
                    }];
                },
            )
            .unwrap();
        world.start(spec).0
    };
    let sh = |c: &NewContainer, script: &str| {
        let out = world
            .runtime
            .exec_sync(&c.id, &strings(&["sh", "-c", script]), None)
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let private = start(0);
    let slave = start(1);
    let shared = start(2);
    for c in [&private, &slave, &shared] {
        assert_eq!(sh(c, "cat /data/hello"), "hi\n");
    }
    // The host mounts something under the volume after the containers started.
    let late = Tmpfs::mount(vol.0.join("late"));
    std::fs::write(late.0.join("f"), "late\n").unwrap();
    assert!(sh(&private, "cat /data/late/f").contains("No such file"));
    assert_eq!(sh(&slave, "cat /data/late/f"), "late\n");
    assert_eq!(sh(&shared, "cat /data/late/f"), "late\n");
    // A mount made in the bidirectional container reaches the host.
    assert_eq!(
        sh(
            &shared,
            "mkdir -p /data/back && mount -t tmpfs t /data/back && echo ok"
        ),
        "ok\n"
    );
    let back = vol.0.join("back");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mountinfo.contains(&format!(" {} ", back.display())),
        "{}",
        back.display()
    );
    let _ = nix::mount::umount2(&back, nix::mount::MntFlags::MNT_DETACH);
    drop(late);
    for c in [&private, &slave, &shared] {
        world.remove(c);
    }
}

#[test]
fn device_nodes_an_image_brings_are_refused_to_an_unprivileged_container() {
    if !can_run() {
        return;
    }
    let world = World::new();
    // The host's first disk (whatever its driver's numbers).
    let disk = std::fs::read_to_string("/proc/partitions")
        .unwrap()
        .lines()
        .skip(2)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4).then(|| (f[0].to_string(), f[1].to_string()))
        })
        .expect("a block device in /proc/partitions");
    // As a layer unpacks them: nodes in the image's own files, root's and
    // world-readable. /dev/zero's numbers are the control: a node the
    // runtime allows does work, so a refusal is the device cgroup's.
    for (name, kind, major, minor) in [
        ("hostmem", "c", "1", "1"),
        ("hostdisk", "b", disk.0.as_str(), disk.1.as_str()),
        ("zero", "c", "1", "5"),
    ] {
        let path = world.layer.join(name);
        let status = std::process::Command::new("/bin/busybox")
            .args(["mknod", "-m", "666"])
            .arg(&path)
            .args([kind, major, minor])
            .status()
            .unwrap();
        assert!(status.success(), "mknod {}", path.display());
    }
    let script = "for n in hostmem hostdisk zero; do \
                  if head -c 1 /$n >/dev/null; then echo $n-read; else echo $n-refused; fi; \
                  done";
    let spec = world
        .convert(
            script,
            cri::LinuxContainerSecurityContext::default(),
            |_, _, _| {},
        )
        .unwrap();
    let (code, text) = world.output(spec);
    assert_eq!(code, 0, "{text}");
    for expected in ["hostmem-refused", "hostdisk-refused", "zero-read"] {
        assert!(text.lines().any(|l| l == expected), "{expected}: {text}");
    }
    assert!(text.contains("Operation not permitted"), "{text}");
}
