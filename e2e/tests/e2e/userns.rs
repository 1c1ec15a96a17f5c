//! User namespaces (`userns_options` mode POD): the pod made by the real
//! berthd over CRI, its containers created as berthd's CreateContainer does
//! (`cri_spec::convert` with the pod's facts, then `lifecycle::create`) and
//! run by real runc, and checked from inside and from the host.

use std::ops::Deref;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_cri::container::{self as cri_spec, PodFacts};
use berth_e2e::bundles::Bundles;
use berth_e2e::cri::runtime_service_client::RuntimeServiceClient;
use berth_e2e::cri::{
    IdMapping, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest,
    NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PodSandboxState,
    PodSandboxStatusRequest, RunPodSandboxRequest, StatusRequest,
    UserNamespace as CriUserNamespace,
};
use berth_e2e::{Berthd, Options, Paths, can_run, have_command, is_root, mounts_under};
use berth_proto::cri;
use berth_runtime::lifecycle::{self, NewContainer};
use berth_runtime::oci::wait_exit;
use berth_runtime::spec::{IdMap, ImageConfig, Namespace, PodFiles, UserNamespace};
use nix::sys::signal::Signal;
use tonic::transport::Channel;

type Client = RuntimeServiceClient<Channel>;

const CNI_BIN_DIR: &str = "/usr/lib/cni";
const HOST_ROOT: u32 = 100_000;
const RANGE: u32 = 65_536;

fn can_run_userns() -> bool {
    can_run(
        is_root()
            && have_command("runc")
            && Path::new("/bin/busybox").exists()
            && Path::new(CNI_BIN_DIR).join("bridge").exists()
            && berth_runtime::features::probe(Path::new("runc")).user_namespaces,
        "root, runc, busybox-static, the CNI plugins and a kernel with user namespaces \
         and id-mapped overlay layers (5.19+)",
    )
}

/// Paths every user in the pod can traverse: runc resolves the rootfs and
/// the pod's files as the pod's root, which is nobody on the host.
fn open_paths() -> Paths {
    let paths = Paths::create();
    std::fs::set_permissions(
        paths.dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    paths
}

/// A bridge network of this test's own, and berthd's config for it.
fn network(dir: &Path) -> Options {
    let pid = std::process::id();
    let conf_dir = dir.join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conflist = format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "berth-e2e-userns-{pid}",
  "plugins": [{{
    "type": "bridge", "bridge": "bu{bridge}", "isGateway": true,
    "ipam": {{ "type": "host-local", "dataDir": "{data}",
               "ranges": [[{{ "subnet": "10.{octet}.7.0/24" }}]] }}
  }}]
}}"#,
        bridge = pid % 100_000,
        data = dir.join("ipam").display(),
        octet = 208 + pid % 16,
    );
    std::fs::write(conf_dir.join("10-userns.conflist"), conflist).unwrap();
    Options {
        config: format!(
            "[cni]\nconf_dir = \"{}\"\nbin_dirs = [\"{CNI_BIN_DIR}\"]\n",
            conf_dir.display()
        ),
        ..Options::default()
    }
}

fn mapping(host_id: u32, container_id: u32, length: u32) -> IdMapping {
    IdMapping {
        host_id,
        container_id,
        length,
    }
}

fn userns(mode: NamespaceMode, uids: Vec<IdMapping>, gids: Vec<IdMapping>) -> CriUserNamespace {
    CriUserNamespace {
        mode: mode as i32,
        uids,
        gids,
    }
}

fn pod_userns() -> CriUserNamespace {
    userns(
        NamespaceMode::Pod,
        vec![mapping(HOST_ROOT, 0, RANGE)],
        vec![mapping(HOST_ROOT, 0, RANGE)],
    )
}

fn pod(name: &str, network: NamespaceMode, user: Option<CriUserNamespace>) -> PodSandboxConfig {
    let sysctls = if network == NamespaceMode::Pod {
        [
            ("kernel.shm_rmid_forced", "1"),
            ("net.ipv4.ip_unprivileged_port_start", "80"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    } else {
        Default::default()
    };
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: network as i32,
                    pid: NamespaceMode::Pod as i32,
                    ipc: NamespaceMode::Pod as i32,
                    target_id: String::new(),
                    userns_options: user,
                }),
                ..LinuxSandboxSecurityContext::default()
            }),
            sysctls,
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    }
}

async fn inspect(client: &mut Client, id: &str) -> (cri::PodSandboxStatus, serde_json::Value) {
    let resp = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info = serde_json::from_str(&resp.info["info"]).unwrap();
    (resp.status.unwrap(), info)
}

fn path(value: &serde_json::Value) -> Option<PathBuf> {
    value.as_str().map(PathBuf::from)
}

/// What berthd's CreateContainer gives `berth_cri::container::convert` for this pod.
fn facts(info: &serde_json::Value, user: Option<&CriUserNamespace>) -> PodFacts {
    let ns = &info["namespaces"];
    let pinned = |kind: &str| path(&ns[kind]).map_or(Namespace::Host, Namespace::Path);
    let files = &info["files"];
    let maps = |maps: &[IdMapping]| {
        maps.iter()
            .map(|m| IdMap {
                host_id: m.host_id,
                container_id: m.container_id,
                size: m.length,
            })
            .collect()
    };
    PodFacts {
        network: pinned("net"),
        ipc: pinned("ipc"),
        uts: pinned("uts"),
        pid: Some(pinned("pid")),
        user: path(&ns["user"]).map(|path| UserNamespace {
            path,
            uid_mappings: maps(&user.unwrap().uids),
            gid_mappings: maps(&user.unwrap().gids),
        }),
        cgroup_parent: PathBuf::new(),
        files: PodFiles {
            hostname: path(&files["hostname"]),
            hosts: path(&files["hosts"]),
            resolv_conf: path(&files["resolv_conf"]),
            shm: path(&files["shm"]),
        },
        hostname: "userns".into(),
        sysctls: Default::default(),
        privileged: false,
        log_directory: PathBuf::new(),
    }
}

/// busybox as a one-layer image, and runc.
struct Containers(Bundles);

impl Deref for Containers {
    type Target = Bundles;
    fn deref(&self) -> &Bundles {
        &self.0
    }
}

impl Containers {
    fn new() -> Containers {
        let bundles = Bundles::new("root:x:0:\n");
        // runc resolves the rootfs and the pod's files as the pod's root,
        // which is nobody on the host.
        std::fs::set_permissions(
            bundles.paths.dir(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        Containers(bundles)
    }

    /// Runs `script` in the pod; its exit code, output and the container's
    /// upper dir (kept until `remove`).
    fn run(
        &self,
        script: &str,
        pod: &PodFacts,
        user: Option<&CriUserNamespace>,
        mounts: Vec<cri::Mount>,
    ) -> (i32, String, NewContainer) {
        let config = cri::ContainerConfig {
            command: vec!["sh".into(), "-c".into(), script.into()],
            mounts,
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: NamespaceMode::Pod as i32,
                        userns_options: user.cloned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                resources: None,
            }),
            ..Default::default()
        };
        let mut options = cri_spec::Options::new("unused");
        options.features = berth_runtime::features::probe(Path::new("runc"));
        let spec = cri_spec::convert(&config, &ImageConfig::default(), pod, &options)
            .unwrap()
            .spec;
        let c = self.new_container(spec);
        lifecycle::create(&self.runtime, &c).unwrap_or_else(|e| panic!("create: {e}"));
        self.runtime.start(&c.id).unwrap();
        let exit = wait_exit(&c.run_dir, Duration::from_secs(60))
            .unwrap()
            .expect("container exits");
        let text = std::fs::read_to_string(&c.log_path).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .collect();
        (exit.exit_code, lines.join("\n"), c)
    }
}

/// `user:[inode]` of a namespace file (a pin or /proc/<pid>/ns/user).
fn ns_id(file: &Path) -> String {
    format!("user:[{}]", std::fs::metadata(file).unwrap().ino())
}

/// The inode of the user namespace owning the namespace at `file`.
fn owner(file: &Path) -> u64 {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const NS_GET_USERNS: u64 = 0xb701;
    let ns = std::fs::File::open(file).unwrap();
    // SAFETY: NS_GET_USERNS on an nsfs fd returns a new fd, owned at once.
    let fd = unsafe { nix::libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS as _) };
    assert!(
        fd >= 0,
        "NS_GET_USERNS {}: {}",
        file.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd nobody else owns.
    let owner = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    owner.metadata().unwrap().ino()
}

fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

#[tokio::test]
async fn pod_user_namespace_maps_root_and_owns_the_rootfs_writes() {
    if !can_run_userns() {
        return;
    }
    let paths = open_paths();
    let options = network(paths.dir());
    let berthd = Berthd::start_in(paths, options.clone()).await;
    let mut client = berthd.runtime().await;
    // Status reports what works on this host.
    let handlers = client
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .runtime_handlers;
    assert!(
        handlers
            .iter()
            .all(|h| h.features.is_some_and(|f| f.user_namespaces)),
        "{handlers:?}"
    );

    let user = pod_userns();
    let id = berth_e2e::run_pod(
        &mut client,
        pod("userns", NamespaceMode::Pod, Some(user.clone())),
    )
    .await
    .unwrap();
    let (status, info) = inspect(&mut client, &id).await;
    let reported = status
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .and_then(|o| o.userns_options)
        .unwrap();
    assert_eq!(reported, user);
    let pin = path(&info["namespaces"]["user"]).unwrap();
    assert_eq!(pin, berthd.paths().run_root().join("ns/user").join(&id));
    // The user namespace owns every other namespace of the pod.
    for kind in ["net", "ipc", "uts", "pid"] {
        let pinned = path(&info["namespaces"][kind]).unwrap();
        assert_eq!(
            owner(&pinned),
            std::fs::metadata(&pin).unwrap().ino(),
            "{kind}"
        );
    }
    // The infra process (PID 1 of the pod) is inside the pod's namespace,
    // as its root.
    let infra = info["pid"].as_i64().unwrap();
    let proc = PathBuf::from(format!("/proc/{infra}"));
    assert_eq!(
        std::fs::read_link(proc.join("ns/user")).unwrap(),
        PathBuf::from(ns_id(&pin))
    );
    let status_text = std::fs::read_to_string(proc.join("status")).unwrap();
    assert!(
        status_text
            .lines()
            .any(|l| words(l) == ["Uid:", "100000", "100000", "100000", "100000"]),
        "{status_text}"
    );

    let containers = Containers::new();
    let facts = facts(&info, Some(&user));
    // A host directory as a volume: id-mapped, its files keep their host
    // owners (host root is the pod's root).
    let volume = containers.paths.dir().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("host-file"), "from the host\n").unwrap();
    let mounts = vec![cri::Mount {
        container_path: "/data".into(),
        host_path: volume.to_str().unwrap().into(),
        ..Default::default()
    }];
    let script = "cat /proc/self/uid_map /proc/self/gid_map; id; \
                  touch /created && echo x >> /etc/group && head -n1 /etc/passwd; \
                  ls -ln /etc/passwd; readlink /proc/self/ns/user; \
                  cat /proc/sys/kernel/shm_rmid_forced /proc/sys/net/ipv4/ip_unprivileged_port_start; \
                  ls -ln /data/host-file; cat /data/host-file; mkdir /data/made";
    let (code, text, first) = containers.run(script, &facts, Some(&user), mounts);
    assert_eq!(code, 0, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(words(lines[0]), ["0", "100000", "65536"], "{text}");
    assert_eq!(words(lines[1]), ["0", "100000", "65536"], "{text}");
    assert!(lines[2].starts_with("uid=0(root) gid=0(root)"), "{text}");
    assert_eq!(lines[3], "root:x:0:0:root:/root:/bin/sh", "{text}");
    // Image files are the pod root's inside.
    assert_eq!(words(lines[4])[2..4], ["0", "0"], "{text}");
    assert_eq!(lines[5], ns_id(&pin), "{text}");
    // The pod's sysctls were set in its namespaces, from inside.
    assert_eq!(lines[6..8], ["1", "80"], "{text}");
    assert_eq!(words(lines[8])[2..4], ["0", "0"], "{text}");
    assert_eq!(lines[9], "from the host", "{text}");
    let made = std::fs::metadata(volume.join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (0, 0));
    // What it wrote lands in the upper dir under the mapped host ids; the
    // image's own layer is untouched.
    let upper = first.state_dir.join("upper");
    for file in ["created", "etc/group"] {
        let meta = std::fs::metadata(upper.join(file)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (HOST_ROOT, HOST_ROOT), "{file}");
    }
    assert_eq!(
        std::fs::metadata(containers.layer.join("etc/group"))
            .unwrap()
            .uid(),
        0
    );
    // A second container of the pod shares the namespace.
    let (code, text, second) =
        containers.run("readlink /proc/self/ns/user", &facts, None, Vec::new());
    assert_eq!((code, text.as_str()), (0, ns_id(&pin).as_str()));
    containers.remove(&first);
    containers.remove(&second);

    // The pod and its namespace survive a berthd restart.
    drop(client);
    let (_, paths) = berthd.stop_with(Signal::SIGKILL).await;
    let berthd = Berthd::start_in(paths, options).await;
    let mut client = berthd.runtime().await;
    let (status, after) = inspect(&mut client, &id).await;
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(after["namespaces"], info["namespaces"]);
    assert_eq!(
        std::fs::read_link(proc.join("ns/user")).unwrap(),
        PathBuf::from(ns_id(&pin))
    );
    berth_e2e::stop_and_remove_pod(&mut client, &id).await;
    assert!(!pin.exists());
    assert_eq!(
        mounts_under(&berthd.paths().run_root()),
        Vec::<PathBuf>::new()
    );
    assert_eq!(mounts_under(containers.paths.dir()), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn bad_user_namespaces_are_refused_and_node_mode_is_the_host() {
    if !can_run_userns() {
        return;
    }
    let paths = open_paths();
    let mut options = network(paths.dir());
    // crun before 1.9 cannot report its features: no user namespaces.
    let crun = Path::new("/usr/bin/crun");
    let crun_lacks_userns = crun.exists() && !berth_runtime::features::probe(crun).user_namespaces;
    if crun_lacks_userns {
        options.config += "[runtimes.crun]\npath = \"/usr/bin/crun\"\n";
    }
    let berthd = Berthd::start_in(paths, options).await;
    let mut client = berthd.runtime().await;
    let field = "config.linux.security_context.namespace_options.userns_options";
    if crun_lacks_userns {
        let err = client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod("crun", NamespaceMode::Pod, Some(pod_userns()))),
                runtime_handler: "crun".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().starts_with(&format!("{field}.mode:"))
                && err.message().contains("not supported on this host"),
            "{err:?}"
        );
    }
    let map = |h, c, l| vec![mapping(h, c, l)];
    let pod_mode = NamespaceMode::Pod;
    let cases = [
        (
            userns(pod_mode, vec![], map(HOST_ROOT, 0, RANGE)),
            NamespaceMode::Pod,
            format!("{field}.uids"),
        ),
        (
            userns(
                pod_mode,
                map(HOST_ROOT, 0, RANGE),
                vec![mapping(HOST_ROOT, 0, 10), mapping(HOST_ROOT + 5, 10, 10)],
            ),
            NamespaceMode::Pod,
            format!("{field}.gids[1]"),
        ),
        (
            userns(
                pod_mode,
                vec![mapping(HOST_ROOT, 0, 100), mapping(300_000, 50, 10)],
                map(HOST_ROOT, 0, RANGE),
            ),
            NamespaceMode::Pod,
            format!("{field}.uids[1]"),
        ),
        (
            userns(pod_mode, map(HOST_ROOT, 0, 0), map(HOST_ROOT, 0, RANGE)),
            NamespaceMode::Pod,
            format!("{field}.uids[0].length"),
        ),
        (
            userns(pod_mode, map(HOST_ROOT, 1, RANGE), map(HOST_ROOT, 0, RANGE)),
            NamespaceMode::Pod,
            format!("{field}.uids"),
        ),
        (
            userns(
                NamespaceMode::Target,
                map(HOST_ROOT, 0, RANGE),
                map(HOST_ROOT, 0, RANGE),
            ),
            NamespaceMode::Pod,
            format!("{field}.mode"),
        ),
        (
            userns(
                NamespaceMode::Container,
                map(HOST_ROOT, 0, RANGE),
                map(HOST_ROOT, 0, RANGE),
            ),
            NamespaceMode::Pod,
            format!("{field}.mode"),
        ),
        (
            pod_userns(),
            NamespaceMode::Node,
            "config.linux.security_context.namespace_options.network".to_string(),
        ),
    ];
    for (i, (user, network, named)) in cases.into_iter().enumerate() {
        let err = berth_e2e::run_pod(&mut client, pod(&format!("bad-{i}"), network, Some(user)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().starts_with(&format!("{named}:")),
            "{named}: {err:?}"
        );
    }
    // Nothing was made: no pinned namespace, no record, no pod.
    let run_root = berthd.paths().run_root();
    assert!(std::fs::read_dir(run_root.join("ns/user")).map_or(true, |mut d| d.next().is_none()));
    assert!(
        std::fs::read_dir(berthd.paths().root().join("pods"))
            .map_or(true, |mut d| d.next().is_none())
    );
    let listed = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(listed.is_empty(), "{listed:?}");

    // A failure once the namespaces exist (a sysctl value the kernel
    // refuses) takes them all down again.
    let mut config = pod("bad-sysctl", NamespaceMode::Pod, Some(pod_userns()));
    config.linux.as_mut().unwrap().sysctls.insert(
        "net.ipv4.ip_unprivileged_port_start".into(),
        "not-a-number".into(),
    );
    let err = berth_e2e::run_pod(&mut client, config).await.unwrap_err();
    assert!(
        err.message().contains("ip_unprivileged_port_start"),
        "{err:?}"
    );
    assert_eq!(mounts_under(&run_root), Vec::<PathBuf>::new());
    assert!(
        std::fs::read_dir(berthd.paths().root().join("pods"))
            .map_or(true, |mut d| d.next().is_none())
    );

    // NODE (explicit) is the host's user namespace, as no option at all.
    let node = userns(NamespaceMode::Node, vec![], vec![]);
    let id = berth_e2e::run_pod(
        &mut client,
        pod("node", NamespaceMode::Node, Some(node.clone())),
    )
    .await
    .unwrap();
    let (status, info) = inspect(&mut client, &id).await;
    let reported = status
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .and_then(|o| o.userns_options)
        .unwrap();
    assert_eq!(reported, node);
    assert!(info["namespaces"]["user"].is_null(), "{info}");
    let infra = info["pid"].as_i64().unwrap();
    assert_eq!(
        std::fs::read_link(format!("/proc/{infra}/ns/user")).unwrap(),
        std::fs::read_link("/proc/self/ns/user").unwrap()
    );
    let containers = Containers::new();
    let (code, text, c) = containers.run(
        "cat /proc/self/uid_map; touch /created",
        &facts(&info, None),
        Some(&node),
        Vec::new(),
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(words(&text), ["0", "0", "4294967295"]);
    assert_eq!(
        std::fs::metadata(c.state_dir.join("upper/created"))
            .unwrap()
            .uid(),
        0
    );
    containers.remove(&c);
    berth_e2e::stop_and_remove_pod(&mut client, &id).await;
}
