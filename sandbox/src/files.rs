//! The files a pod's containers mount: hostname, /etc/hosts,
//! /etc/resolv.conf, and the /dev/shm tmpfs.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use berth_host::atomic::Durability;
use nix::mount::{MntFlags, MsFlags};

use crate::spec::Dns;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot mount the pod's /dev/shm at {path}: {source}")]
    MountShm { path: PathBuf, source: nix::Error },
    #[error("cannot unmount the pod's /dev/shm at {path}: {source}")]
    UnmountShm { path: PathBuf, source: nix::Error },
}

pub fn resolv_conf(dns: Option<&Dns>) -> Vec<u8> {
    match dns {
        Some(dns)
            if !(dns.servers.is_empty() && dns.searches.is_empty() && dns.options.is_empty()) =>
        {
            let mut text = String::new();
            if !dns.searches.is_empty() {
                let _ = writeln!(text, "search {}", dns.searches.join(" "));
            }
            for server in &dns.servers {
                let _ = writeln!(text, "nameserver {server}");
            }
            if !dns.options.is_empty() {
                let _ = writeln!(text, "options {}", dns.options.join(" "));
            }
            text.into_bytes()
        }
        // No DNS config: the host's, as CRI-O does.
        _ => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
    }
}

/// The pod's own /etc/hosts: localhost entries and its hostname on each IP.
/// A host-network pod gets the host's file.
pub fn hosts(host_network: bool, hostname: &str, ips: &[IpAddr]) -> Vec<u8> {
    if host_network {
        return std::fs::read("/etc/hosts").unwrap_or_default();
    }
    let mut text = String::from(
        "# Berth-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    for ip in ips {
        let _ = writeln!(text, "{ip}\t{hostname}");
    }
    text.into_bytes()
}

/// No fsync: these files matter only while the pod's namespaces exist, and
/// those do not survive the power loss an fsync would guard against. 0644:
/// every user in the container reads them.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .and_then(|()| berth_host::atomic::write(path, bytes, 0o644, Durability::Volatile))
        .map_err(|source| FileError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// A private tmpfs of `size` bytes, as /dev/shm is mounted in containers.
pub fn mount_shm(path: &Path, size: u64) -> Result<(), FileError> {
    std::fs::create_dir_all(path).map_err(|source| FileError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    nix::mount::mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={size}").as_str()),
    )
    .map_err(|source| FileError::MountShm {
        path: path.to_path_buf(),
        source,
    })
}

/// Unmounts the pod's shm; not mounted (or not there) is fine.
pub fn unmount_shm(path: &Path) -> Result<(), FileError> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(FileError::UnmountShm {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let dns = Dns {
            servers: vec!["10.96.0.10".into(), "1.1.1.1".into()],
            searches: vec!["ns.svc.cluster.local".into(), "cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            String::from_utf8(resolv_conf(Some(&dns))).unwrap(),
            "search ns.svc.cluster.local cluster.local\nnameserver 10.96.0.10\nnameserver 1.1.1.1\noptions ndots:5\n"
        );
    }

    #[test]
    fn hosts_name_each_pod_ip() {
        let text = String::from_utf8(hosts(
            false,
            "web",
            &["10.85.0.4".parse().unwrap(), "fd00::4".parse().unwrap()],
        ))
        .unwrap();
        assert!(text.contains("127.0.0.1\tlocalhost\n"));
        assert!(text.contains("10.85.0.4\tweb\n"));
        assert!(text.contains("fd00::4\tweb\n"));
    }
}
