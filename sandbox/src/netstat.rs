//! Interface counters of a pod's network namespace: a short-lived thread
//! joins the pinned namespace and reads `/proc/thread-self/net/dev` (a file
//! read, no netlink, no fork). The thread ends after the read, so no other
//! work ever runs in the pod's namespace.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NetStatError {
    #[error("cannot join network namespace {path}: {source}")]
    Join {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the interfaces of network namespace {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The counters of every interface but `lo` in the namespace pinned at
/// `netns`.
pub fn read(netns: &Path) -> Result<Vec<InterfaceCounters>, NetStatError> {
    let path = netns.to_path_buf();
    let joined = std::thread::spawn(move || {
        use nix::sched::{CloneFlags, setns};
        let file = std::fs::File::open(&path).map_err(|source| NetStatError::Join {
            path: path.clone(),
            source,
        })?;
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| NetStatError::Join {
            path: path.clone(),
            source: errno.into(),
        })?;
        let text = std::fs::read_to_string("/proc/thread-self/net/dev")
            .map_err(|source| NetStatError::Read { path, source })?;
        Ok(parse(&text))
    })
    .join();
    joined.unwrap_or_else(|_| {
        Err(NetStatError::Read {
            path: netns.to_path_buf(),
            source: std::io::Error::other("the reader thread panicked"),
        })
    })
}

/// `/proc/net/dev`: two header lines, then `name: 8 rx fields 8 tx fields`
/// (each side: bytes, packets, errs, drop, …).
fn parse(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, fields) = line.split_once(':')?;
            let name = name.trim();
            let values: Vec<u64> = fields
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            (name != "lo" && values.len() >= 12).then(|| InterfaceCounters {
                name: name.to_string(),
                rx_bytes: values[0],
                rx_packets: values[1],
                rx_errors: values[2],
                rx_dropped: values[3],
                tx_bytes: values[8],
                tx_packets: values[9],
                tx_errors: values[10],
                tx_dropped: values[11],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev_without_lo() {
        let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0:    5000      40    3    2    0     0          0         0     7000      50    4    1    0     0       0          0
";
        assert_eq!(
            parse(text),
            vec![InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_packets: 40,
                rx_errors: 3,
                rx_dropped: 2,
                tx_bytes: 7000,
                tx_packets: 50,
                tx_errors: 4,
                tx_dropped: 1,
            }]
        );
    }

    #[test]
    fn a_missing_namespace_is_an_error() {
        assert!(matches!(
            read(Path::new("/nonexistent/netns")),
            Err(NetStatError::Join { .. })
        ));
    }
}
