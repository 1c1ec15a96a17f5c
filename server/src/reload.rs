//! SIGHUP: re-read the config files (flags still win) and apply what can
//! change while berthd runs: the log level, the image settings (registries
//! config, pull parallelism, max_layer_size) and the runtime handlers. Anything else that
//! differs is logged as needing a restart. A config, or registries config,
//! that does not load changes nothing.

use std::sync::Arc;

use berth_image::ImageStore;

use crate::config::{self, Config, Overrides, Sources};
use crate::live::LiveConfig;
use crate::logging::LevelHandle;

pub struct Reloader {
    pub sources: Sources,
    pub overrides: Overrides,
    pub live: Arc<LiveConfig>,
    pub images: Arc<ImageStore>,
    pub log: LevelHandle,
}

impl Reloader {
    pub fn reload(&self) {
        let new = match config::load(&self.sources, &self.overrides) {
            Ok(loaded) => loaded.config,
            Err(err) => {
                tracing::error!("config reload failed, keeping the running config: {err}");
                return;
            }
        };
        let old = self.live.get();
        // The only other step that can fail, so it goes first: nothing is
        // applied unless everything loads.
        let registries_changed = match crate::cri::reload_store(&self.images, &new) {
            Ok(changed) => changed,
            Err(err) => {
                tracing::error!(
                    "config reload failed, keeping the running config: image.registries_config: {err}"
                );
                return;
            }
        };
        let mut applied = (*old).clone();
        let mut changes = Vec::new();
        if new.log_level != old.log_level {
            match self.log.set(&new.log_level) {
                Ok(()) => {
                    changes.push(format!(
                        "log_level {:?} -> {:?}",
                        old.log_level, new.log_level
                    ));
                    applied.log_level = new.log_level.clone();
                }
                Err(err) => tracing::error!("cannot change the log level: {err}"),
            }
        }
        if new.image.registries_config != old.image.registries_config {
            changes.push(format!(
                "image.registries_config {} -> {}",
                old.image.registries_config.display(),
                new.image.registries_config.display()
            ));
        } else if registries_changed {
            changes.push(format!(
                "image.registries_config {} re-read with new content",
                new.image.registries_config.display()
            ));
        }
        let pull_keys = [
            (
                "pull_parallelism",
                old.image.pull_parallelism.to_string(),
                new.image.pull_parallelism.to_string(),
            ),
            (
                "pull_retries",
                old.image.pull_retries.to_string(),
                new.image.pull_retries.to_string(),
            ),
            (
                "pull_progress_timeout",
                old.image.pull_progress_timeout.to_string(),
                new.image.pull_progress_timeout.to_string(),
            ),
            (
                "max_layer_size",
                old.image.max_layer_size.to_string(),
                new.image.max_layer_size.to_string(),
            ),
        ];
        for (key, old, new) in pull_keys {
            if old != new {
                changes.push(format!("image.{key} {old} -> {new}"));
            }
        }
        applied.image = new.image.clone();
        changes.extend(runtime_changes(&old, &new));
        applied.runtimes = new.runtimes.clone();
        applied.default_runtime = new.default_runtime.clone();

        for key in needs_restart(&old, &new) {
            tracing::warn!(
                "config key `{key}` changed but needs a restart; the running value stays"
            );
        }
        self.live.set(applied);
        if changes.is_empty() {
            tracing::info!("config reloaded: nothing that applies live changed");
        } else {
            tracing::info!("config reloaded: {}", changes.join("; "));
        }
    }
}

fn runtime_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    for (name, handler) in &new.runtimes {
        match old.runtimes.get(name) {
            None => changes.push(format!(
                "runtime handler {name:?} added ({})",
                handler.path.display()
            )),
            Some(before) if before != handler => changes.push(format!(
                "runtime handler {name:?} path {} -> {}",
                before.path.display(),
                handler.path.display()
            )),
            Some(_) => {}
        }
    }
    for name in old.runtimes.keys() {
        if !new.runtimes.contains_key(name) {
            changes.push(format!("runtime handler {name:?} removed"));
        }
    }
    if new.default_runtime != old.default_runtime {
        changes.push(format!(
            "default_runtime {:?} -> {:?}",
            old.default_runtime, new.default_runtime
        ));
    }
    changes
}

/// Top-level keys a reload applies; every other one needs a restart.
const LIVE_KEYS: [&str; 4] = ["log_level", "image", "runtimes", "default_runtime"];

/// Top-level keys (sections included) whose new value only a restart would
/// apply. Compared generically, so a section added later is covered too.
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let table = |config: &Config| toml::Table::try_from(config).expect("configs serialize");
    let (old, new) = (table(old), table(new));
    old.keys()
        .chain(new.keys().filter(|key| !old.contains_key(*key)))
        .filter(|key| !LIVE_KEYS.contains(&key.as_str()) && old.get(*key) != new.get(*key))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::RuntimeHandler;

    #[test]
    fn runtime_changes_and_restart_keys_are_named() {
        let old = Config::default();
        let mut new = Config::default();
        new.runtimes.insert(
            "crun".into(),
            RuntimeHandler {
                path: PathBuf::from("/usr/bin/crun"),
            },
        );
        new.runtimes.remove("runc");
        new.default_runtime = "crun".into();
        new.pod.shm_size = 1 << 20;
        new.root = PathBuf::from("/srv/berth");
        assert_eq!(
            runtime_changes(&old, &new),
            [
                "runtime handler \"crun\" added (/usr/bin/crun)",
                "runtime handler \"runc\" removed",
                "default_runtime \"runc\" -> \"crun\"",
            ]
        );
        assert_eq!(needs_restart(&old, &new), ["pod", "root"]);
    }
}
