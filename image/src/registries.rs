//! The `containers-registries.conf(5)` v2 format: where a repository is
//! pulled from (mirrors, then the origin), which registries are insecure or
//! blocked, and which registries qualify a short name.

use std::path::Path;

use serde::Deserialize;

use crate::reference::{DOCKER_IO, ImageRef, RegistryHost};

#[derive(Debug, thiserror::Error)]
pub enum RegistriesError {
    #[error("cannot read registries config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("registries config {path}: {message}")]
    Parse { path: String, message: String },
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RegistriesConfig {
    /// Registries that qualify a short name, tried in order.
    #[serde(default)]
    pub unqualified_search_registries: Vec<String>,
    #[serde(default)]
    pub registry: Vec<Registry>,
    /// Short-name aliases: `"busybox" = "docker.io/library/busybox"`.
    #[serde(default)]
    pub aliases: std::collections::BTreeMap<String, String>,
}

fn parse(path: &Path, text: &str) -> Result<RegistriesConfig, RegistriesError> {
    toml::from_str(text).map_err(|err| RegistriesError::Parse {
        path: path.display().to_string(),
        message: err.message().to_string(),
    })
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Registry {
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub blocked: bool,
    #[serde(default)]
    pub mirror: Vec<Mirror>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Mirror {
    pub location: String,
    #[serde(default)]
    pub insecure: bool,
}

/// One place to fetch a repository from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    /// The repository path on that host.
    pub path: String,
    /// Plain HTTP, or HTTPS without certificate verification.
    pub insecure: bool,
}

impl Endpoint {
    pub fn registry(&self) -> RegistryHost {
        RegistryHost::new(&self.host)
    }
}

/// Where to pull `image` from, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Endpoints(Vec<Endpoint>),
    /// The matching `[[registry]]` entry's prefix.
    Blocked(String),
}

impl RegistriesConfig {
    /// Reads `path` and then its drop-ins, `<path>.d/*.conf` in lexical
    /// order (as containers/image does): a drop-in's search list replaces
    /// the one before, its `[[registry]]` entries replace those with the same
    /// prefix, its aliases are added. A missing `path` is an error only when
    /// `required`; then (or with `None`) the built-in defaults apply.
    pub fn load(path: Option<&Path>, required: bool) -> Result<RegistriesConfig, RegistriesError> {
        let mut config = RegistriesConfig::default();
        if let Some(path) = path {
            match std::fs::read_to_string(path) {
                Ok(text) => config.merge(parse(path, &text)?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
                Err(source) => {
                    return Err(RegistriesError::Read {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
            let mut dir = path.as_os_str().to_owned();
            dir.push(".d");
            let mut drop_ins: Vec<_> = match std::fs::read_dir(&dir) {
                Ok(entries) => entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "conf"))
                    .collect(),
                Err(_) => Vec::new(),
            };
            drop_ins.sort();
            for drop_in in drop_ins {
                let text =
                    std::fs::read_to_string(&drop_in).map_err(|source| RegistriesError::Read {
                        path: drop_in.display().to_string(),
                        source,
                    })?;
                config.merge(parse(&drop_in, &text)?);
            }
        }
        if config.unqualified_search_registries.is_empty() {
            config.unqualified_search_registries = vec![DOCKER_IO.to_string()];
        }
        Ok(config)
    }

    fn merge(&mut self, layer: RegistriesConfig) {
        if !layer.unqualified_search_registries.is_empty() {
            self.unqualified_search_registries = layer.unqualified_search_registries;
        }
        for mut reg in layer.registry {
            if reg.prefix.is_empty() {
                reg.prefix = reg.location.clone();
            }
            if reg.location.is_empty() && !reg.prefix.starts_with("*.") {
                reg.location = reg.prefix.clone();
            }
            match self.registry.iter_mut().find(|r| r.prefix == reg.prefix) {
                Some(existing) => *existing = reg,
                None => self.registry.push(reg),
            }
        }
        self.aliases.extend(layer.aliases);
    }

    /// The fully qualified name a short name is an alias for, if any.
    pub fn alias(&self, short: &str) -> Option<&str> {
        self.aliases.get(short).map(String::as_str)
    }

    fn matching(&self, name: &str) -> Option<&Registry> {
        self.registry
            .iter()
            .filter(|r| prefix_matches(&r.prefix, name))
            .max_by_key(|r| r.prefix.len())
    }

    pub fn source(&self, image: &ImageRef) -> Source {
        let name = image.repository();
        let Some(reg) = self.matching(&name) else {
            return Source::Endpoints(vec![endpoint(&name, false)]);
        };
        if reg.blocked {
            return Source::Blocked(reg.prefix.clone());
        }
        // A wildcard prefix keeps the host; otherwise the prefix is rewritten to the location.
        let rewrite = |location: &str| {
            if reg.prefix.starts_with("*.") {
                name.clone()
            } else {
                format!("{location}{}", &name[reg.prefix.len()..])
            }
        };
        let mut endpoints: Vec<Endpoint> = reg
            .mirror
            .iter()
            .map(|m| endpoint(&rewrite(&m.location), m.insecure))
            .collect();
        let origin = if reg.location.is_empty() {
            name.clone()
        } else {
            rewrite(&reg.location)
        };
        endpoints.push(endpoint(&origin, reg.insecure));
        Source::Endpoints(endpoints)
    }
}

fn endpoint(name: &str, insecure: bool) -> Endpoint {
    let (host, path) = name.split_once('/').unwrap_or((name, ""));
    let host = if host == DOCKER_IO {
        "registry-1.docker.io"
    } else {
        host
    };
    Endpoint {
        host: host.to_string(),
        path: path.to_string(),
        insecure,
    }
}

/// `example.com/foo` matches `example.com/foo` and `example.com/foo/bar`,
/// not `example.com/foobar`; `*.example.com` matches any subdomain's repositories.
fn prefix_matches(prefix: &str, name: &str) -> bool {
    if let Some(domain) = prefix.strip_prefix("*.") {
        let host = name.split('/').next().unwrap_or("");
        return host.ends_with(&format!(".{domain}"));
    }
    name == prefix
        || (name.starts_with(prefix)
            && matches!(name.as_bytes().get(prefix.len()), Some(b'/' | b':' | b'@')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::ParsedRef;

    fn conf(text: &str) -> RegistriesConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registries.conf");
        std::fs::write(&path, text).unwrap();
        RegistriesConfig::load(Some(&path), true).unwrap()
    }

    fn image(s: &str) -> ImageRef {
        let p = ParsedRef::parse(s).unwrap();
        p.qualify(&p.domain.clone().unwrap())
    }

    #[test]
    fn mirrors_then_origin_with_prefix_rewrite() {
        let c = conf(
            r#"
unqualified-search-registries = ["quay.io", "docker.io"]
[[registry]]
prefix = "example.com/foo"
location = "internal.example.com/bar"
insecure = true
[[registry.mirror]]
location = "mirror.local:5000/m"
"#,
        );
        assert_eq!(c.unqualified_search_registries, ["quay.io", "docker.io"]);
        let Source::Endpoints(eps) = c.source(&image("example.com/foo/app:1")) else {
            panic!()
        };
        assert_eq!(
            eps,
            [
                Endpoint {
                    host: "mirror.local:5000".into(),
                    path: "m/app".into(),
                    insecure: false
                },
                Endpoint {
                    host: "internal.example.com".into(),
                    path: "bar/app".into(),
                    insecure: true
                },
            ]
        );
        let Source::Endpoints(eps) = c.source(&image("example.com/foobar/app")) else {
            panic!()
        };
        assert_eq!(eps[0].host, "example.com");
    }

    #[test]
    fn drop_ins_replace_by_prefix_and_add_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registries.conf");
        std::fs::write(&path, "unqualified-search-registries = [\"a.io\"]\n[[registry]]\nprefix = \"x.io\"\nblocked = true\n").unwrap();
        std::fs::create_dir(dir.path().join("registries.conf.d")).unwrap();
        std::fs::write(
            dir.path().join("registries.conf.d/10-x.conf"),
            "[[registry]]\nprefix = \"x.io\"\ninsecure = true\n[aliases]\n\"app\" = \"x.io/team/app\"\n",
        )
        .unwrap();
        let c = RegistriesConfig::load(Some(&path), true).unwrap();
        assert_eq!(c.unqualified_search_registries, ["a.io"]);
        let Source::Endpoints(eps) = c.source(&image("x.io/y")) else {
            panic!("replaced, not blocked")
        };
        assert!(eps[0].insecure);
        assert_eq!(c.alias("app"), Some("x.io/team/app"));
        // Optional and missing: the defaults.
        let none = RegistriesConfig::load(Some(&dir.path().join("missing.conf")), false).unwrap();
        assert_eq!(none.unqualified_search_registries, ["docker.io"]);
        assert!(RegistriesConfig::load(Some(&dir.path().join("missing.conf")), true).is_err());
    }

    #[test]
    fn blocked_and_wildcards() {
        let c = conf(
            r#"
[[registry]]
prefix = "*.evil.io"
blocked = true
[[registry]]
location = "127.0.0.1:5000"
insecure = true
"#,
        );
        assert_eq!(
            c.source(&image("a.evil.io/x")),
            Source::Blocked("*.evil.io".into())
        );
        let Source::Endpoints(eps) = c.source(&image("127.0.0.1:5000/x/y")) else {
            panic!()
        };
        assert!(eps[0].insecure);
        assert_eq!(c.unqualified_search_registries, ["docker.io"]);
    }
}
