//! The image RPCs: PullImage, ListImages, ImageStatus, RemoveImage,
//! ImageFsInfo, mapped onto `berth_image::ImageStore` as CRI-O answers them.

use std::collections::HashMap;
use std::time::Duration;

use berth_cri::grpc::ToStatus;
use berth_image::{Credentials, ImageStore, PullSettings, StoreError, StoreOptions};
use berth_proto::cri::{
    AuthConfig, FilesystemIdentifier, FilesystemUsage, Image, ImageFsInfoRequest,
    ImageFsInfoResponse, ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value,
    ListImagesRequest, ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse, UInt64Value,
};
use tonic::Status;

use super::CriService;
use crate::config::{Config, DEFAULT_REGISTRIES_CONFIG};
use crate::metrics;

/// Opens `<root>/images`, cleaning what a crash left half done.
pub fn open_store(config: &Config) -> Result<ImageStore, StoreError> {
    let registries = &config.image.registries_config;
    ImageStore::open(StoreOptions {
        dir: config.root.join("images"),
        registries_config: Some(registries.clone()),
        registries_config_required: registries_required(config),
        pull: pull_settings(config),
    })
}

fn pull_settings(config: &Config) -> PullSettings {
    PullSettings {
        parallelism: config.image.pull_parallelism,
        retries: config.image.pull_retries,
        progress_timeout: Duration::from_secs(config.image.pull_progress_timeout),
        max_layer_size: config.image.max_layer_size,
    }
}

/// The default file is optional; a path the operator set must exist.
fn registries_required(config: &Config) -> bool {
    config.image.registries_config.as_os_str() != DEFAULT_REGISTRIES_CONFIG
}

/// Applies `config`'s registries config and pull settings to the store
/// for the pulls that start from now on; on error the store keeps the old.
/// Returns whether the registries config's content changed.
pub fn reload_store(images: &ImageStore, config: &Config) -> Result<bool, StoreError> {
    images.reload(
        Some(&config.image.registries_config),
        registries_required(config),
        pull_settings(config),
    )
}

/// The image name of an ImageSpec, or INVALID_ARGUMENT naming the field.
fn image_name(spec: Option<&ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.as_str()) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(Status::invalid_argument("image.image must name an image")),
    }
}

fn credentials(auth: Option<&AuthConfig>) -> Result<Credentials, Status> {
    let Some(auth) = auth else {
        return Ok(Credentials::default());
    };
    let mut creds = Credentials {
        username: auth.username.clone(),
        password: auth.password.clone(),
        identity_token: auth.identity_token.clone(),
        registry_token: auth.registry_token.clone(),
        server_address: auth.server_address.clone(),
    };
    if !auth.auth.is_empty() {
        let decoded = Credentials::from_auth_field(&auth.auth).ok_or_else(|| {
            Status::invalid_argument("auth.auth must be base64 of \"username:password\"")
        })?;
        creds.username = decoded.username;
        creds.password = decoded.password;
    }
    Ok(creds)
}

/// `uid` for a numeric config `User`, `username` otherwise (group dropped),
/// neither when it is empty: what CRI-O reports.
fn user(config_user: &str) -> (Option<Int64Value>, String) {
    let user = config_user.split(':').next().unwrap_or("");
    if user.is_empty() {
        return (None, String::new());
    }
    match user.parse::<i64>() {
        Ok(value) => (Some(Int64Value { value }), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

fn to_cri(image: &berth_image::Image) -> Image {
    let (uid, username) = user(&image.config.config.user);
    Image {
        id: image.id_hex(),
        repo_tags: image.repo_tags.clone(),
        repo_digests: image.repo_digests.clone(),
        size: image.size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: image.id_hex(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl CriService {
    pub(super) async fn pull_image(
        &self,
        req: PullImageRequest,
    ) -> Result<PullImageResponse, Status> {
        let name = image_name(req.image.as_ref())?;
        let creds = credentials(req.auth.as_ref())?;
        let started = std::time::Instant::now();
        let pulled = match self.images.pull(name, &creds).await {
            Ok(pulled) => pulled,
            Err(err) => {
                let err = err.to_status();
                metrics::global().pull_failed(err.code());
                return Err(err);
            }
        };
        metrics::global().pull_succeeded(pulled.downloaded, started.elapsed());
        tracing::info!(image = name, id = %pulled.image.id_hex(), downloaded = pulled.downloaded, "pulled image");
        // The image ID (its config digest), as Image.id and
        // ContainerStatus.image_id give it and CRI-O answers: one identifier
        // whichever registry name the image came through.
        Ok(PullImageResponse {
            image_ref: pulled.image.id_hex(),
        })
    }

    pub(super) async fn list_images(
        &self,
        req: ListImagesRequest,
    ) -> Result<ListImagesResponse, Status> {
        let wanted = req
            .filter
            .and_then(|f| f.image)
            .map(|spec| spec.image)
            .filter(|name| !name.is_empty());
        let images = match wanted {
            Some(name) => self.images.get(&name).iter().map(to_cri).collect(),
            None => self.images.list().iter().map(to_cri).collect(),
        };
        Ok(ListImagesResponse { images })
    }

    pub(super) async fn image_status(
        &self,
        req: ImageStatusRequest,
    ) -> Result<ImageStatusResponse, Status> {
        let name = image_name(req.image.as_ref())?;
        // An absent image is an empty answer, not an error: the kubelet asks
        // before every pull.
        let Some(image) = self.images.get(name) else {
            return Ok(ImageStatusResponse::default());
        };
        let mut info = HashMap::new();
        if req.verbose {
            let verbose = serde_json::json!({
                "imageSpec": image.config,
                "chainIDs": image.chain_ids,
                "manifests": image.manifests,
                "platform": {
                    "os": image.config.os,
                    "architecture": image.config.architecture,
                    "variant": image.config.variant,
                },
                "layerDirs": self.images.lower_dirs(&image),
            });
            info.insert("info".to_string(), verbose.to_string());
        }
        Ok(ImageStatusResponse {
            image: Some(to_cri(&image)),
            info,
        })
    }

    pub(super) async fn remove_image(
        &self,
        req: RemoveImageRequest,
    ) -> Result<RemoveImageResponse, Status> {
        let name = image_name(req.image.as_ref())?;
        let containers = &self.containers;
        let users = |id: &str| {
            containers
                .list()
                .into_iter()
                .filter(|c| {
                    c.image_id == id
                        || c.mounts
                            .iter()
                            .flatten()
                            .any(|m| m.image.as_ref().is_some_and(|v| v.image_id == id))
                })
                .map(|c| c.id)
                .collect()
        };
        self.images
            .remove(name, users)
            .await
            .map_err(|err| err.to_status())?;
        Ok(RemoveImageResponse {})
    }

    pub(super) async fn image_fs_info(
        &self,
        _req: ImageFsInfoRequest,
    ) -> Result<ImageFsInfoResponse, Status> {
        let images = self.images.clone();
        let containers = self.containers.state_dir().to_path_buf();
        let span = tracing::Span::current();
        let (usage, container_fs) = tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                // The containers' writable layers count apart only on a
                // filesystem of their own (the kubelet's split image fs);
                // on one filesystem the kubelet takes the image one for both.
                let device = |dir: &std::path::Path| {
                    std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(dir).ok()?).into()
                };
                let apart = matches!(
                    (device(images.dir()), device(&containers)),
                    (Some::<u64>(a), Some(b)) if a != b
                );
                let container_fs = apart.then(|| {
                    let (bytes, inodes) = berth_runtime::stats::disk_usage(&containers);
                    (containers, bytes, inodes)
                });
                (images.usage(), container_fs)
            })
        })
        .await
        .map_err(|e| Status::internal(format!("measuring the image store: {e}")))?;
        let timestamp = berth_host::now_nanos();
        let filesystem = |mountpoint: &std::path::Path, bytes, inodes| FilesystemUsage {
            timestamp,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: mountpoint.display().to_string(),
            }),
            used_bytes: Some(UInt64Value { value: bytes }),
            inodes_used: Some(UInt64Value { value: inodes }),
        };
        Ok(ImageFsInfoResponse {
            image_filesystems: vec![filesystem(self.images.dir(), usage.bytes, usage.inodes)],
            container_filesystems: container_fs
                .iter()
                .map(|(dir, bytes, inodes)| filesystem(dir, *bytes, *inodes))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_as_cri_o_reports_it() {
        assert_eq!(user(""), (None, String::new()));
        assert_eq!(
            user("1000:1000"),
            (Some(Int64Value { value: 1000 }), String::new())
        );
        assert_eq!(user("nobody:nogroup"), (None, "nobody".to_string()));
    }
}
