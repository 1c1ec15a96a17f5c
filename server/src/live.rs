//! The configuration in effect: the start-up config with what a SIGHUP
//! reload changed live (log level, image settings, runtime handlers).
//!
//! `CriService.config` stays the start-up config; code that must follow a
//! reload (the runtime handler table, `Status` verbose) reads
//! [`LiveConfig::get`], e.g. `self.live.get().runtimes.get(name)`.

use std::sync::{Arc, RwLock};

use crate::config::Config;

#[derive(Debug)]
pub struct LiveConfig {
    current: RwLock<Arc<Config>>,
}

impl LiveConfig {
    pub fn new(config: Config) -> Arc<LiveConfig> {
        Arc::new(LiveConfig {
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// A snapshot: later reloads do not change it.
    pub fn get(&self) -> Arc<Config> {
        berth_host::sync::read(&self.current).clone()
    }

    pub(crate) fn set(&self, config: Config) {
        *berth_host::sync::write(&self.current) = Arc::new(config);
    }
}

impl berth_sandbox::RuntimeHandlers for LiveConfig {
    fn names(&self) -> Vec<String> {
        self.get().runtimes.keys().cloned().collect()
    }

    fn default_name(&self) -> String {
        self.get().default_runtime.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use berth_sandbox::RuntimeHandlers;

    use super::*;
    use crate::config::RuntimeHandler;

    #[test]
    fn handlers_follow_a_reload() {
        let live = LiveConfig::new(Config::default());
        assert_eq!(live.default_name(), "runc");
        assert_eq!(live.names(), ["runc"]);
        let snapshot = live.get();
        let mut next = Config::default();
        next.runtimes.insert(
            "crun".into(),
            RuntimeHandler {
                path: PathBuf::from("/usr/bin/crun"),
            },
        );
        next.default_runtime = "crun".into();
        live.set(next);
        assert_eq!(live.default_name(), "crun");
        assert_eq!(live.names(), ["crun", "runc"]);
        assert_eq!(snapshot.default_runtime, "runc");
    }
}
