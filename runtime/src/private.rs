//! Private state dirs (the CVE-2021-41091 class): what holds layers, a
//! rootfs, upper dirs, specs, shm or records must not be reachable by host
//! users, who could run a setuid binary a container wrote, open a device
//! node an image ships, read a spec's env or plant files in a layer.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Root only.
pub const PRIVATE: u32 = 0o700;

/// Creates `path` (missing parents with the usual 0755, as they are not
/// berthd's) and sets its mode to `mode` whatever it was, so a dir an
/// older version made 0755 is tightened.
pub fn dir(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => return Err(err),
        _ => {}
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
