//! `/proc/self/mountinfo` (proc(5)): one parser, one unescaper.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo, the fields Berth reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,...`).
    pub options: String,
    /// Optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
    pub fstype: String,
    pub source: String,
    /// Per-superblock options; for a cgroup v1 mount, its controllers.
    pub super_options: String,
}

impl Mount {
    pub fn is_shared(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("shared:"))
    }

    pub fn is_slave(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("master:"))
    }
}

/// This mount namespace's mounts, in mount order.
pub fn read() -> std::io::Result<Vec<Mount>> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|text| parse(&text))
}

/// Parses mountinfo text; a malformed line is skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    let (head, tail) = line.split_once(" - ")?;
    let head: Vec<&str> = head.split(' ').collect();
    let mut tail = tail.split(' ');
    Some(Mount {
        mount_point: unescape(head.get(4)?),
        options: (*head.get(5)?).to_string(),
        optional: head[6..].iter().map(|s| s.to_string()).collect(),
        fstype: tail.next()?.to_string(),
        source: tail.next().unwrap_or("").to_string(),
        super_options: tail.next().unwrap_or("").to_string(),
    })
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
pub fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], code) {
            (b'\\', Some(code)) => {
                out.push(code);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The mount points at or below `dir`, deepest first, each once: the order
/// to unmount them in.
pub fn mount_points_under(mounts: &[Mount], dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mounts
        .iter()
        .map(|m| m.mount_point.clone())
        .filter(|path| path.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// The mount that holds `path`: the deepest mount point above it, the last
/// mounted when several are stacked there.
pub fn holding<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for mount in mounts.iter().filter(|m| path.starts_with(&m.mount_point)) {
        let depth = mount.mount_point.components().count();
        if best.is_none_or(|b| depth >= b.mount_point.components().count()) {
            best = Some(mount);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /sys/fs/cgroup/memory rw,nosuid master:5 - cgroup cgroup rw,memory
31 22 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
40 22 0:50 / /var/lib/my\\040dir rw - tmpfs tmpfs rw
41 40 0:51 / /var/lib/my\\040dir/a\\134b rw shared:9 - overlay overlay rw,lowerdir=/x
bad line
42 22 0:52 / /end\\040 rw - tmpfs tmpfs rw
";

    #[test]
    fn fields_and_escapes() {
        let mounts = parse(SAMPLE);
        assert_eq!(mounts.len(), 6);
        assert_eq!(mounts[1].fstype, "cgroup");
        assert_eq!(mounts[1].super_options, "rw,memory");
        assert!(mounts[1].is_slave() && !mounts[1].is_shared());
        assert!(mounts[0].is_shared());
        assert_eq!(mounts[3].mount_point, Path::new("/var/lib/my dir"));
        assert_eq!(mounts[4].mount_point, Path::new("/var/lib/my dir/a\\b"));
        // An escape at the very end of the field is decoded too.
        assert_eq!(mounts[5].mount_point, Path::new("/end "));
        assert_eq!(unescape("a\\9x\\"), Path::new("a\\9x\\"));
    }

    #[test]
    fn mounts_under_a_dir_deepest_first_and_the_holding_mount() {
        let mounts = parse(SAMPLE);
        assert_eq!(
            mount_points_under(&mounts, Path::new("/var/lib/my dir")),
            [
                PathBuf::from("/var/lib/my dir/a\\b"),
                PathBuf::from("/var/lib/my dir")
            ]
        );
        let held = holding(&mounts, Path::new("/var/lib/my dir/a\\b/c")).unwrap();
        assert_eq!(held.fstype, "overlay");
        assert_eq!(holding(&mounts, Path::new("/etc")).unwrap().fstype, "ext4");
        // Whole components only: /var/lib/my dirx is not below /var/lib/my dir.
        let beside = holding(&mounts, Path::new("/var/lib/my dirx")).unwrap();
        assert_eq!(beside.mount_point, Path::new("/"));
    }
}
