//! Network configuration: the first valid `.conflist`, `.conf` or `.json`
//! file of the conf dir in lexical order, as libcni picks it.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The spec versions this client speaks. 0.3.x results differ only in
/// naming from 0.4.0, but the issue of record asks for 0.4.0 onwards and
/// libcni's own CHECK/DEL-with-prevResult rules start there.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot list CNI conf dir {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no valid CNI network config in {dir}{}", rejected_list(.rejected))]
    NoConfig {
        dir: PathBuf,
        /// Files that were considered and why each was refused.
        rejected: Vec<String>,
    },
}

fn rejected_list(rejected: &[String]) -> String {
    if rejected.is_empty() {
        String::new()
    } else {
        format!(" (rejected: {})", rejected.join("; "))
    }
}

/// A network config list: one named network, a chain of plugins.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    /// Each plugin's own config object, as the file gave it.
    pub plugins: Vec<Map<String, Value>>,
    /// The file it came from (for messages), and its exact bytes so the
    /// cache can replay DEL with what ADD saw.
    pub source: PathBuf,
    pub bytes: Vec<u8>,
}

impl NetworkConfigList {
    /// Parses a `.conflist` (or, with `single`, a `.conf`/`.json` holding one
    /// plugin) and checks what libcni checks before use.
    pub fn parse(source: &Path, bytes: &[u8], single: bool) -> Result<Self, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|err| format!("invalid JSON: {err}"))?;
        let Value::Object(object) = value else {
            return Err("not a JSON object".into());
        };
        let name = string_field(&object, "name")?;
        let cni_version = string_field(&object, "cniVersion")?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(format!(
                "cniVersion {cni_version:?} is not supported (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            ));
        }
        let disable_check = object
            .get("disableCheck")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let plugins = if single {
            vec![object.clone()]
        } else {
            match object.get("plugins") {
                Some(Value::Array(list)) if !list.is_empty() => list
                    .iter()
                    .map(|plugin| match plugin {
                        Value::Object(p) => Ok(p.clone()),
                        _ => Err("a \"plugins\" entry is not an object".to_string()),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err("\"plugins\" must be a non-empty array".into()),
            }
        };
        for plugin in &plugins {
            let kind = string_field(plugin, "type")?;
            if kind.contains('/') || kind == "." || kind == ".." {
                return Err(format!("plugin type {kind:?} is not a plain file name"));
            }
        }
        Ok(NetworkConfigList {
            name,
            cni_version,
            disable_check,
            plugins,
            source: source.to_path_buf(),
            bytes: bytes.to_vec(),
        })
    }

    /// Rebuilds a list from cached bytes (DEL after the conf dir changed).
    pub fn from_cached(source: &Path, bytes: &[u8]) -> Result<Self, String> {
        let single = serde_json::from_slice::<Value>(bytes)
            .map(|v| v.get("plugins").is_none())
            .unwrap_or(false);
        Self::parse(source, bytes, single)
    }

    pub fn plugin_type(&self, index: usize) -> &str {
        self.plugins[index]
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// CHECK and prevResult on DEL exist from 0.4.0 on; every supported
    /// version has them.
    pub fn supports_check(&self) -> bool {
        !self.disable_check
    }
}

fn string_field(object: &Map<String, Value>, key: &str) -> Result<String, String> {
    match object.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(format!("\"{key}\" must be a non-empty string")),
        None => Err(format!("\"{key}\" is missing")),
    }
}

/// The first valid config in `dir`, files in lexical order.
pub fn load_dir(dir: &Path) -> Result<NetworkConfigList, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError::NoConfig {
                dir: dir.to_path_buf(),
                rejected: Vec::new(),
            });
        }
        Err(source) => {
            return Err(ConfigError::ReadDir {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "conflist" || ext == "conf" || ext == "json")
        })
        .collect();
    files.sort();
    let mut rejected = Vec::new();
    for path in files {
        let single = path.extension().is_some_and(|ext| ext != "conflist");
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) => {
                rejected.push(format!("{}: {err}", path.display()));
                continue;
            }
        };
        match NetworkConfigList::parse(&path, &bytes, single) {
            Ok(list) => return Ok(list),
            Err(why) => rejected.push(format!("{}: {why}", path.display())),
        }
    }
    Err(ConfigError::NoConfig {
        dir: dir.to_path_buf(),
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: &str = r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn first_valid_file_in_lexical_order_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("05-broken.conflist"), "{").unwrap();
        std::fs::write(
            dir.path().join("07-old.conflist"),
            r#"{"cniVersion":"0.1.0","name":"o","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("10-a.conflist"), BRIDGE).unwrap();
        std::fs::write(
            dir.path().join("20-b.conf"),
            r#"{"cniVersion":"1.0.0","name":"b","type":"ptp"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("00-ignored.txt"), "x").unwrap();
        let list = load_dir(dir.path()).unwrap();
        assert_eq!(list.name, "n");
        assert_eq!(list.plugins.len(), 2);
        assert_eq!(list.plugin_type(1), "portmap");
    }

    #[test]
    fn single_conf_becomes_a_one_plugin_list() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("20-b.conf"),
            r#"{"cniVersion":"0.4.0","name":"b","type":"ptp"}"#,
        )
        .unwrap();
        let list = load_dir(dir.path()).unwrap();
        assert_eq!(list.name, "b");
        assert_eq!(list.plugin_type(0), "ptp");
        let again = NetworkConfigList::from_cached(&list.source, &list.bytes).unwrap();
        assert_eq!(again, list);
    }

    #[test]
    fn no_valid_config_says_why_for_each_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.conflist"), r#"{"name":"x"}"#).unwrap();
        std::fs::write(
            dir.path().join("b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#,
        )
        .unwrap();
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("a.conflist: \"cniVersion\" is missing"),
            "{err}"
        );
        assert!(err.contains("b.conflist: \"plugins\" must be"), "{err}");
        let err = load_dir(&dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("no valid CNI network config"), "{err}");
    }
}
