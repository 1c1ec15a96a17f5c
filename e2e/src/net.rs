//! A private CNI network per test: its own conf dir, bridge, /24 subnet
//! (plus a ULA /64 when asked) and host-local data dir, so tests run in
//! parallel and never touch /etc/cni; leak checks read what the plugins
//! still hold.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use std::time::{Duration, Instant};

use berth_proto::cri::StatusRequest;
use berth_proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::{Options, can_run, have_command, is_root};

pub const BIN_DIR: &str = "/usr/lib/cni";

pub fn can_run_network() -> bool {
    can_run(
        is_root()
            && have_command("nsenter")
            && have_command("busybox")
            && have_command("iptables-save")
            && Path::new(BIN_DIR).join("bridge").exists(),
        "root, nsenter, busybox, iptables and the CNI plugins in /usr/lib/cni",
    )
}

/// A private pod network: conf dir, bridge, /24 subnet, host-local store.
pub struct Net {
    dir: tempfile::TempDir,
    pub name: String,
    pub bridge: String,
    /// The first three octets of the subnet.
    pub prefix: String,
}

impl Net {
    /// `index` is unique per test in this file; the pid keeps concurrent
    /// runs of the suite apart.
    pub fn new(index: u8) -> Net {
        Self::build(index, None, false)
    }

    pub fn with_plugins(index: u8, extra: Option<&str>) -> Net {
        Self::build(index, extra, false)
    }

    /// With `ipv6`, host-local also hands out an address from a ULA /64.
    pub fn build(index: u8, extra: Option<&str>, ipv6: bool) -> Net {
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-net-")
            .tempdir()
            .unwrap();
        let name = format!("berth-e2e-{pid}-{index}");
        let bridge = format!("bp{}x{index}", pid % 100_000);
        let prefix = format!("10.{}.{index}", 224 + pid % 16);
        let net = Net {
            dir,
            name,
            bridge,
            prefix,
        };
        std::fs::create_dir(net.conf_dir()).unwrap();
        let extra = extra.map(|p| format!(",{p}")).unwrap_or_default();
        let (v6_range, v6_route) = if ipv6 {
            (
                format!(
                    r#", [{{ "subnet": "fd00:be:{:x}:{index}::/64" }}]"#,
                    pid % 0xffff
                ),
                r#", { "dst": "::/0" }"#.to_string(),
            )
        } else {
            (String::new(), String::new())
        };
        let conflist = format!(
            r#"{{
  "cniVersion": "1.0.0",
  "name": "{name}",
  "plugins": [
    {{
      "type": "bridge", "bridge": "{bridge}", "isGateway": true, "ipMasq": true,
      "ipam": {{
        "type": "host-local", "dataDir": "{data}",
        "routes": [{{ "dst": "0.0.0.0/0" }}{v6_route}],
        "ranges": [[{{ "subnet": "{prefix}.0/24" }}]{v6_range}]
      }}
    }},
    {{ "type": "portmap", "capabilities": {{ "portMappings": true }} }}{extra}
  ]
}}"#,
            name = net.name,
            bridge = net.bridge,
            data = net.data_dir().display(),
            prefix = net.prefix,
        );
        std::fs::write(net.conf_dir().join("10-test.conflist"), conflist).unwrap();
        net
    }

    /// The network's own temporary dir (conf dir, IPAM data, scratch).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    pub fn options(&self) -> Options {
        options_for(&self.conf_dir())
    }

    /// Addresses host-local still holds.
    pub fn allocated(&self) -> Vec<String> {
        let dir = self.data_dir().join(&self.name);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
            .collect()
    }

    /// Interfaces (the host ends of pod veths) on the bridge.
    pub fn ports(&self) -> String {
        let out = sh(&["ip", "-o", "link", "show", "master", &self.bridge]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

pub fn options_for(conf_dir: &Path) -> Options {
    Options {
        config: format!(
            "[cni]\nconf_dir = \"{}\"\nbin_dirs = [\"{BIN_DIR}\"]\nplugin_timeout = 30\n",
            conf_dir.display()
        ),
        ..Options::default()
    }
}

pub fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"))
}

/// Polls Status until `want` accepts NetworkReady's message (`None` when
/// ready); returns that message. The conf dir is re-read once a second.
pub async fn wait_network_ready(
    client: &mut RuntimeServiceClient<Channel>,
    want: impl Fn(Option<&str>) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = client
            .status(StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
        let network = status
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.r#type == "NetworkReady")
            .unwrap();
        let message = (!network.status).then(|| {
            assert_eq!(network.reason, "NetworkPluginNotReady");
            network.message.clone()
        });
        if want(message.as_deref()) {
            return message;
        }
        assert!(Instant::now() < deadline, "NetworkReady stayed {message:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
