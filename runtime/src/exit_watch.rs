//! Learns of a container's exit the moment its shim writes the exit file:
//! one inotify watch per run dir. With it, List serves the records it holds
//! instead of reading every container's files on each call (as CRI-O
//! watches conmon's exit files); the periodic refresh stays for a shim that
//! dies without writing one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use berth_host::sync::lock;
use berth_shim_protocol::EXIT_FILE;

pub struct ExitWatch {
    inotify: Inotify,
    /// Watched run dir → its container's ID.
    ids: Mutex<HashMap<WatchDescriptor, String>>,
}

impl ExitWatch {
    pub fn new() -> nix::Result<ExitWatch> {
        Ok(ExitWatch {
            inotify: Inotify::init(InitFlags::IN_CLOEXEC)?,
            ids: Mutex::new(HashMap::new()),
        })
    }

    /// Watches `run_dir` for container `id`'s exit file (written atomically
    /// by a rename, or in place).
    pub fn add(&self, id: &str, run_dir: &Path) -> nix::Result<()> {
        let wd = self.inotify.add_watch(
            run_dir,
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_ONLYDIR,
        )?;
        lock(&self.ids).insert(wd, id.to_string());
        Ok(())
    }

    /// Blocks until an exit file appears in a watched run dir; the IDs of
    /// the containers it appeared for. A removed run dir's watch is dropped.
    pub fn next(&self) -> nix::Result<Vec<String>> {
        let events = self.inotify.read_events()?;
        let mut ids = lock(&self.ids);
        let mut exited = Vec::new();
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                ids.remove(&event.wd);
            } else if event.name.as_deref().is_some_and(|n| n == EXIT_FILE)
                && let Some(id) = ids.get(&event.wd)
                && !exited.contains(id)
            {
                exited.push(id.clone());
            }
        }
        Ok(exited)
    }

    #[cfg(test)]
    fn watched(&self) -> usize {
        lock(&self.ids).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_file_names_its_container_once_and_a_removed_dir_is_forgotten() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let watch = ExitWatch::new().unwrap();
        watch.add("ctr-a", &a).unwrap();
        watch.add("ctr-b", &b).unwrap();
        // Other files are not exits; the shim's atomic write is.
        std::fs::write(a.join("shim.pid"), b"1").unwrap();
        berth_host::atomic::write_private(&a.join(EXIT_FILE), b"{}").unwrap();
        assert_eq!(watch.next().unwrap(), ["ctr-a"]);
        std::fs::remove_dir_all(&b).unwrap();
        assert_eq!(watch.next().unwrap(), Vec::<String>::new());
        assert_eq!(watch.watched(), 1);
    }
}
