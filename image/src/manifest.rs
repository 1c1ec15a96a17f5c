//! Manifests: OCI and Docker schema 2 images and indexes, platform selection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// What the client asks for: every manifest kind it can use.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "manifest {reference} is Docker schema 1, which is deprecated and not supported; push it again with a current client"
    )]
    Schema1 { reference: String },
    #[error("manifest {reference} has unsupported media type {media_type:?}")]
    MediaType {
        reference: String,
        media_type: String,
    },
    #[error("manifest {reference} is not valid JSON: {source}")]
    Json {
        reference: String,
        source: serde_json::Error,
    },
    #[error("image index {reference} has no manifest for {platform}")]
    NoPlatform { reference: String, platform: String },
    #[error("layer {digest} has unsupported media type {media_type:?}")]
    LayerType { digest: Digest, media_type: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this berthd runs on, in OCI terms.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            other => (other, None),
        };
        Platform {
            architecture: architecture.into(),
            os: std::env::consts::OS.into(),
            variant: variant.map(str::to_string),
        }
    }

    fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match (&self.variant, &candidate.variant) {
            (Some(want), Some(have)) => want == have,
            // arm64 images rarely name their variant; v8 is implied.
            _ => true,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    schema_version: u32,
    #[serde(default)]
    media_type: String,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Debug, Clone)]
pub enum Manifest {
    Image(ImageManifest),
    Index(Vec<Descriptor>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageManifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl Manifest {
    /// Parses a manifest; `content_type` is the registry's header, used when
    /// the body does not name its media type.
    pub fn parse(
        reference: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Manifest, ManifestError> {
        let raw: Raw = serde_json::from_slice(body).map_err(|source| ManifestError::Json {
            reference: reference.into(),
            source,
        })?;
        let media_type = if raw.media_type.is_empty() {
            content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        } else {
            raw.media_type.clone()
        };
        if raw.schema_version == 1 || DOCKER_SCHEMA1.contains(&media_type.as_str()) {
            return Err(ManifestError::Schema1 {
                reference: reference.into(),
            });
        }
        let is_index = matches!(media_type.as_str(), OCI_INDEX | DOCKER_LIST)
            || (raw.manifests.is_some() && raw.layers.is_none());
        let is_image = matches!(media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST)
            || (raw.config.is_some() && raw.layers.is_some());
        match (is_index, is_image, raw) {
            (
                true,
                _,
                Raw {
                    manifests: Some(m), ..
                },
            ) => Ok(Manifest::Index(m)),
            (
                false,
                true,
                Raw {
                    config: Some(config),
                    layers: Some(layers),
                    ..
                },
            ) => {
                for layer in &layers {
                    Compression::of(layer)?;
                }
                Ok(Manifest::Image(ImageManifest { config, layers }))
            }
            _ => Err(ManifestError::MediaType {
                reference: reference.into(),
                media_type,
            }),
        }
    }
}

/// Picks the manifest for `want` from an index.
pub fn select(
    reference: &str,
    manifests: &[Descriptor],
    want: &Platform,
) -> Result<Descriptor, ManifestError> {
    manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
        .cloned()
        .ok_or_else(|| ManifestError::NoPlatform {
            reference: reference.into(),
            platform: want.to_string(),
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn of(layer: &Descriptor) -> Result<Compression, ManifestError> {
        Ok(match layer.media_type.as_str() {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
            other => {
                return Err(ManifestError::LayerType {
                    digest: layer.digest.clone(),
                    media_type: other.into(),
                });
            }
        })
    }
}

/// The parts of the image config (OCI image spec `config`) Berth uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stop_signal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema1_is_refused() {
        let body = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        let err = Manifest::parse(
            "r",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            body,
        );
        assert!(matches!(err, Err(ManifestError::Schema1 { .. })));
    }

    #[test]
    fn platform_selection() {
        let d = |arch: &str, variant: Option<&str>| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::of(arch.as_bytes()),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(str::to_string),
            }),
        };
        let list = [
            d("arm", Some("v6")),
            d("arm", Some("v7")),
            d("amd64", None),
            d("arm64", None),
        ];
        let want = |arch: &str, variant: Option<&str>| Platform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: variant.map(str::to_string),
        };
        assert_eq!(
            select("r", &list, &want("arm", Some("v7"))).unwrap().digest,
            list[1].digest
        );
        assert_eq!(
            select("r", &list, &want("arm64", Some("v8")))
                .unwrap()
                .digest,
            list[3].digest
        );
        assert!(select("r", &list, &want("s390x", None)).is_err());
    }
}
