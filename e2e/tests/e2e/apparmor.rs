//! AppArmor and the cgroup namespace, through berthd and real runc, checked
//! from inside the containers.
//!
//! Every case runs on every host and checks what that host must do. With
//! AppArmor enabled (`/sys/module/apparmor/parameters/enabled` is `Y`, the
//! fact berthd decides on too): RuntimeDefault confines with berth-default
//! in enforce mode, Unconfined does not, a Localhost profile this test
//! loads blocks a write, and a Localhost profile nobody loaded is refused
//! naming the field and the profile. Without AppArmor (this repository's CI
//! host): RuntimeDefault and Unconfined run with no profile in the spec and
//! any Localhost profile is refused as unsupported, naming the field. So
//! nothing is skipped for want of AppArmor: the AppArmor side is proved in
//! the node VM, where it is enabled. The only skip is the harness's
//! `can_run_here` (root, runc, a registry), which fails under `CI=true`.

use std::path::Path;
use std::process::{Command, Stdio};

use berth_e2e::cri::{self, LinuxContainerSecurityContext, ListContainersRequest};
use berth_e2e::world::{World, can_run_here};

/// Seconds an ExecSync may take: generous, for the node VM under TCG.
const EXEC_TIMEOUT: i64 = 60;

fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

fn sc(config: &mut cri::ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
}

fn profile(kind: cri::security_profile::ProfileType, localhost: &str) -> cri::SecurityProfile {
    cri::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: localhost.into(),
    }
}

/// `process.apparmorProfile` of the container's `config.json`.
fn spec_profile(w: &World, id: &str) -> Option<String> {
    let path = w
        .paths()
        .run_root()
        .join("containers")
        .join(id)
        .join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let spec: serde_json::Value = serde_json::from_str(&text).unwrap();
    spec["process"]["apparmorProfile"]
        .as_str()
        .map(str::to_string)
}

/// The confinement of a process in the container (`cat
/// /proc/self/attr/current` run by ExecSync; runc gives execs the
/// container's profile) and of its first process.
async fn confinement(w: &mut World, id: &str) -> (String, String) {
    let (code, exec, err) = w
        .exec(id, "cat /proc/self/attr/current", EXEC_TIMEOUT)
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, init, err) = w.exec(id, "cat /proc/1/attr/current", EXEC_TIMEOUT).await;
    assert_eq!(code, 0, "{err}");
    (exec.trim().to_string(), init.trim().to_string())
}

/// Whether the container can list a dir below `/sys/firmware` (the
/// first the host has): berth-default denies it (the test containers'
/// masked paths are empty, so only AppArmor stands in the way).
async fn lists_firmware(w: &mut World, id: &str) -> bool {
    let dir = std::fs::read_dir("/sys/firmware")
        .unwrap()
        .flatten()
        .find(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .expect("a dir below /sys/firmware to list")
        .path();
    let script = format!("ls {} >/dev/null", dir.display());
    let (code, _, err) = w.exec(id, &script, EXEC_TIMEOUT).await;
    assert!(code == 0 || err.contains("Permission denied"), "{err}");
    code == 0
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_default_confines_with_berth_default() {
    if !can_run_here() {
        return;
    }
    use cri::security_profile::ProfileType;
    let mut w = World::new("aadefault").await;
    let pod = w.pod("aadefault").await;
    // The kubelet's two ways of saying it: nothing, and RuntimeDefault.
    let unset = w.container("aadefault-unset", "sleep 600");
    let mut typed = w.container("aadefault-typed", "sleep 600");
    sc(&mut typed).apparmor = Some(profile(ProfileType::RuntimeDefault, ""));
    for config in [unset, typed] {
        let id = w.run(&pod, config).await;
        if apparmor_enabled() {
            assert_eq!(spec_profile(&w, &id).as_deref(), Some("berth-default"));
            let (exec, init) = confinement(&mut w, &id).await;
            assert_eq!(exec, "berth-default (enforce)");
            assert_eq!(init, "berth-default (enforce)");
            assert!(
                !lists_firmware(&mut w, &id).await,
                "berth-default must deny /sys/firmware"
            );
            // The profile lets the container's processes signal each other
            // and berthd stop it (below).
            let (code, out, err) = w
                .exec(&id, "sleep 30 & kill $! && echo killed", EXEC_TIMEOUT)
                .await;
            assert_eq!((code, out.trim()), (0, "killed"), "{err}");
        } else {
            assert_eq!(spec_profile(&w, &id), None);
        }
        w.stop(&id, 0).await;
        w.remove(&id).await;
    }
    if apparmor_enabled() {
        let list = std::fs::read_to_string("/sys/kernel/security/apparmor/profiles").unwrap();
        assert!(
            list.lines().any(|l| l == "berth-default (enforce)"),
            "{list}"
        );
    }
    w.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unconfined_runs_unconfined() {
    if !can_run_here() {
        return;
    }
    use cri::security_profile::ProfileType;
    let mut w = World::new("aaunconf").await;
    let pod = w.pod("aaunconf").await;
    let mut typed = w.container("aaunconf-typed", "sleep 600");
    sc(&mut typed).apparmor = Some(profile(ProfileType::Unconfined, ""));
    let mut deprecated = w.container("aaunconf-string", "sleep 600");
    #[allow(deprecated)]
    {
        sc(&mut deprecated).apparmor_profile = "unconfined".into();
    }
    for config in [typed, deprecated] {
        let id = w.run(&pod, config).await;
        assert_eq!(spec_profile(&w, &id), None);
        if apparmor_enabled() {
            let (exec, init) = confinement(&mut w, &id).await;
            assert_eq!((exec.as_str(), init.as_str()), ("unconfined", "unconfined"));
            assert!(lists_firmware(&mut w, &id).await);
        }
        w.stop(&id, 0).await;
        w.remove(&id).await;
    }
    w.remove_pod(&pod).await;
}

/// A profile this test loads into the kernel and unloads when dropped.
struct LoadedProfile {
    name: String,
    text: String,
}

impl LoadedProfile {
    /// Everything allowed but writes below `/tmp`.
    fn no_tmp_writes() -> LoadedProfile {
        let name = format!("berth-e2e-no-tmp-{}", std::process::id());
        // Signals from the host (berth-shim, runc): StopContainer must work.
        let text = format!(
            "profile {name} flags=(attach_disconnected,mediate_deleted) {{\n  file,\n  network,\n  \
             capability,\n  signal (receive) peer=unconfined,\n  signal (send,receive) peer={name},\n  \
             deny /tmp/** w,\n}}\n"
        );
        parser(&["-Kr"], &text);
        LoadedProfile { name, text }
    }
}

impl Drop for LoadedProfile {
    fn drop(&mut self) {
        parser(&["-KR"], &self.text);
    }
}

fn parser(args: &[&str], text: &str) {
    let mut child = Command::new("apparmor_parser")
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("run apparmor_parser (AppArmor is enabled, so it must be installed)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "apparmor_parser {args:?}: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn localhost_profile_blocks_a_write() {
    if !can_run_here() {
        return;
    }
    use cri::security_profile::ProfileType;
    let mut w = World::new("aalocal").await;
    let pod = w.pod("aalocal").await;
    if !apparmor_enabled() {
        // No profile can be loaded: any Localhost one is refused, naming
        // the field, and nothing is left.
        let mut config = w.container("aalocal-c", "sleep 600");
        sc(&mut config).apparmor = Some(profile(ProfileType::Localhost, "some-profile"));
        let err = w.create(&pod, config).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message()
                .starts_with("linux.security_context.apparmor.localhost_ref: not supported")
                && err.message().contains("\"some-profile\""),
            "{}",
            err.message()
        );
        assert_no_containers(&mut w).await;
        w.remove_pod(&pod).await;
        return;
    }
    let loaded = LoadedProfile::no_tmp_writes();
    for (form, localhost) in [("typed", true), ("string", false)] {
        let mut config = w.container(&format!("aalocal-{form}"), "sleep 600");
        if localhost {
            sc(&mut config).apparmor = Some(profile(ProfileType::Localhost, &loaded.name));
        } else {
            #[allow(deprecated)]
            {
                sc(&mut config).apparmor_profile = format!("localhost/{}", loaded.name);
            }
        }
        let id = w.run(&pod, config).await;
        assert_eq!(spec_profile(&w, &id).as_deref(), Some(loaded.name.as_str()));
        let (exec, _) = confinement(&mut w, &id).await;
        assert_eq!(exec, format!("{} (enforce)", loaded.name));
        let (code, _, err) = w.exec(&id, "echo x > /tmp/blocked", EXEC_TIMEOUT).await;
        assert_ne!(code, 0, "the profile must block writes below /tmp");
        assert!(err.contains("Permission denied"), "{err}");
        let (code, _, err) = w
            .exec(&id, "echo x > /allowed && cat /allowed", EXEC_TIMEOUT)
            .await;
        assert_eq!(code, 0, "writes elsewhere are allowed: {err}");
        w.stop(&id, 0).await;
        w.remove(&id).await;
    }
    w.remove_pod(&pod).await;
    drop(loaded);
}

async fn assert_no_containers(w: &mut World) {
    let left = w
        .client
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_localhost_profile_names_the_field_and_the_profile() {
    if !can_run_here() {
        return;
    }
    use cri::security_profile::ProfileType;
    let mut w = World::new("aamissing").await;
    let pod = w.pod("aamissing").await;
    let missing = format!("berth-e2e-never-loaded-{}", std::process::id());
    let mut typed = w.container("aamissing-typed", "sleep 600");
    sc(&mut typed).apparmor = Some(profile(ProfileType::Localhost, &missing));
    let mut deprecated = w.container("aamissing-string", "sleep 600");
    #[allow(deprecated)]
    {
        sc(&mut deprecated).apparmor_profile = format!("localhost/{missing}");
    }
    for (config, field) in [
        (typed, "linux.security_context.apparmor.localhost_ref"),
        (deprecated, "linux.security_context.apparmor_profile"),
    ] {
        let err = w.create(&pod, config.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let message = err.message();
        assert!(
            message.starts_with(&format!("{field}: ")) && message.contains(&missing),
            "{message}"
        );
        if apparmor_enabled() {
            assert!(message.contains("is not loaded"), "{message}");
        } else {
            assert!(message.contains("not supported on this host"), "{message}");
        }
        assert_no_containers(&mut w).await;
        // Nothing was reserved: the name is free once the profile is fine.
        let mut fixed = config;
        sc(&mut fixed).apparmor = Some(profile(ProfileType::Unconfined, ""));
        #[allow(deprecated)]
        {
            sc(&mut fixed).apparmor_profile = String::new();
        }
        let id = w.create(&pod, fixed).await.unwrap();
        w.remove(&id).await;
    }
    w.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cgroup_namespace_on_cgroup_v2_hosts() {
    if !can_run_here() {
        return;
    }
    let v2_only = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let mut w = World::new("cgns").await;
    let pod = w.pod("cgns").await;
    let config = w.container("cgns-c", "sleep 600");
    let id = w.run(&pod, config).await;
    let host_ns = std::fs::read_link("/proc/self/ns/cgroup").unwrap();
    let (code, inside, err) = w
        .exec(&id, "readlink /proc/self/ns/cgroup", EXEC_TIMEOUT)
        .await;
    assert_eq!(code, 0, "{err}");
    let (_, cgroup, _) = w.exec(&id, "cat /proc/self/cgroup", EXEC_TIMEOUT).await;
    if v2_only {
        assert_ne!(inside.trim(), host_ns.to_str().unwrap());
        // The container's own cgroup is the root of its namespace.
        assert_eq!(cgroup.trim(), "0::/", "{cgroup}");
    } else {
        assert_eq!(inside.trim(), host_ns.to_str().unwrap());
    }
    w.stop(&id, 0).await;
    w.remove(&id).await;
    w.remove_pod(&pod).await;
}
