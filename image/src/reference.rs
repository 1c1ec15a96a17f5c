//! Image references in the docker style: `[domain/]path[:tag][@digest]`.

use std::fmt;

use crate::digest::Digest;

pub const DOCKER_IO: &str = "docker.io";

/// A registry as credentials name it: a lower-case `host[:port]`, with
/// docker.io's other names folded into `docker.io`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryHost(String);

impl RegistryHost {
    pub fn new(host: &str) -> RegistryHost {
        let host = host.to_ascii_lowercase();
        match host.as_str() {
            "index.docker.io" | "registry-1.docker.io" => RegistryHost(DOCKER_IO.into()),
            _ => RegistryHost(host),
        }
    }

    /// The registry of a docker-config style server address
    /// (`https://index.docker.io/v1/`, `quay.io`, `host:5000/team`).
    pub fn from_server_address(address: &str) -> RegistryHost {
        let rest = address
            .strip_prefix("https://")
            .or_else(|| address.strip_prefix("http://"))
            .unwrap_or(address);
        RegistryHost::new(rest.split('/').next().unwrap_or(""))
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid image reference {0:?}: {1}")]
    Invalid(String, &'static str),
}

/// What the user typed, parsed but not yet qualified with a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRef {
    /// `None` for a short name such as `busybox` or `library/busybox`.
    pub domain: Option<String>,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// A fully qualified reference: `docker.io/library/busybox:latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ParsedRef {
    pub fn parse(input: &str) -> Result<ParsedRef, ReferenceError> {
        let bad = |why| ReferenceError::Invalid(input.to_string(), why);
        if input.is_empty() {
            return Err(bad("empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => (
                rest,
                Some(digest.parse::<Digest>().map_err(|_| bad("bad digest"))?),
            ),
            None => (input, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && !tag.starts_with(['.', '-'])
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(bad("bad tag"));
            }
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (Some(first.to_string()), path)
            }
            _ => (None, name),
        };
        if let Some(domain) = &domain {
            let ok = domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !ok {
                return Err(bad("bad registry host"));
            }
        }
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.chars().all(|ch| {
                    ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
                })
        };
        if path.is_empty() || !path.split('/').all(component_ok) {
            return Err(bad(
                "repository names must be lowercase letters, digits and separators",
            ));
        }
        Ok(ParsedRef {
            domain,
            path: path.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The registry whose credentials apply: the reference's own, or
    /// docker.io for a short name, as the kubelet's keyring looks them up.
    pub fn credential_registry(&self) -> RegistryHost {
        RegistryHost::new(self.domain.as_deref().unwrap_or(DOCKER_IO))
    }

    /// Qualifies with `domain`; docker.io gets its `library/` namespace, and
    /// a reference with neither tag nor digest means `:latest`.
    pub fn qualify(&self, domain: &str) -> ImageRef {
        let domain = match domain {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_IO,
            other => other,
        };
        let path = if domain == DOCKER_IO && !self.path.contains('/') {
            format!("library/{}", self.path)
        } else {
            self.path.clone()
        };
        let tag = match (&self.tag, &self.digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag.clone(),
        };
        ImageRef {
            domain: domain.to_string(),
            path,
            tag,
            digest: self.digest.clone(),
        }
    }
}

impl ImageRef {
    /// `domain/path`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `domain/path:tag` if tagged.
    pub fn tagged(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|t| format!("{}:{t}", self.repository()))
    }

    /// `domain/path@digest` for a manifest digest.
    pub fn with_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.repository())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_registries() {
        for address in [
            "https://index.docker.io/v1/",
            "docker.io",
            "registry-1.docker.io",
            "Index.Docker.IO",
        ] {
            assert_eq!(
                RegistryHost::from_server_address(address).to_string(),
                "docker.io"
            );
        }
        assert_eq!(
            RegistryHost::from_server_address("http://Host:5000/team/app").to_string(),
            "host:5000"
        );
        let short = ParsedRef::parse("busybox").unwrap();
        assert_eq!(short.credential_registry(), RegistryHost::new(DOCKER_IO));
        let qualified = ParsedRef::parse("quay.io/team/app:1").unwrap();
        assert_eq!(
            qualified.credential_registry(),
            RegistryHost::new("quay.io")
        );
    }

    fn q(s: &str) -> String {
        let p = ParsedRef::parse(s).unwrap();
        let domain = p.domain.clone().unwrap_or_else(|| DOCKER_IO.into());
        p.qualify(&domain).to_string()
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(q("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(q("library/busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(q("docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(q("index.docker.io/user/app"), "docker.io/user/app:latest");
        assert_eq!(q("quay.io/a/b/c:v1"), "quay.io/a/b/c:v1");
        assert_eq!(q("localhost/app"), "localhost/app:latest");
        assert_eq!(q("127.0.0.1:5000/app:1"), "127.0.0.1:5000/app:1");
    }

    #[test]
    fn digests_and_tag_plus_digest() {
        let d = Digest::of(b"x");
        assert_eq!(
            q(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            q(&format!("127.0.0.1:5000/a/b:v1@{d}")),
            format!("127.0.0.1:5000/a/b:v1@{d}")
        );
    }

    #[test]
    fn bad_references() {
        for bad in [
            "",
            "UPPER",
            "a/:x",
            "busybox:",
            "busybox@sha256:00",
            "a//b",
            "-a",
            "busybox:-x",
        ] {
            assert!(ParsedRef::parse(bad).is_err(), "{bad}");
        }
    }
}
