//! The image store under `<root>/images`:
//!
//! ```text
//! blobs/sha256/<hex>          manifests, indexes and configs, verified
//! layers/<chain hex>/diff/    a layer unpacked once, shared by every image with that chain
//! layers/<chain hex>/layer.json
//! images/<config hex>.json    one record per image (ID = config digest)
//! tmp/                        work in progress; emptied at start-up
//! ```
//!
//! A layer becomes visible only by renaming its finished dir from `tmp/`
//! into `layers/`, and an image only by writing its record atomically after
//! all its layers are in place; start-up removes `tmp/` leftovers and layers
//! no record uses, so a kill -9 mid-pull leaves nothing behind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use berth_host::atomic::write_private;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::client::{Client, ClientError, Credentials, Session};
use crate::digest::{ChainId, Digest};
use crate::fsutil::remove_all;
use crate::manifest::{Compression, Descriptor, ImageConfig, Manifest, ManifestError, Platform};
use crate::reference::{ImageRef, ParsedRef, ReferenceError, RegistryHost};
use crate::registries::{RegistriesConfig, RegistriesError, Source};
use crate::unpack::{self, Limits, UnpackError, Usage};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Registries(#[from] RegistriesError),
    #[error("pulling {image}: registry {prefix:?} is blocked by the registries config")]
    Blocked { image: String, prefix: String },
    #[error("pulling {image}: {source}")]
    Client {
        image: String,
        #[source]
        source: ClientError,
    },
    #[error("pulling {image}: {source}")]
    Manifest {
        image: String,
        #[source]
        source: ManifestError,
    },
    #[error("pulling {image}: {what} has digest {actual}, expected {expected}")]
    DigestMismatch {
        image: String,
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("pulling {image}: config {config} lists {diff_ids} diff IDs for {layers} layers")]
    LayerCount {
        image: String,
        config: Digest,
        diff_ids: usize,
        layers: usize,
    },
    #[error("pulling {image}: layer {layer}: {source}")]
    Unpack {
        image: String,
        layer: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("image store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("image {image} is in use by container(s) {}: remove them first", .containers.join(", "))]
    InUse {
        image: String,
        containers: Vec<String>,
    },
}

impl StoreError {
    /// Whether the failed step may succeed if tried again (see
    /// [`ClientError::is_transient`]).
    fn is_transient(&self) -> bool {
        matches!(self, StoreError::Client { source, .. } if source.is_transient())
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How the store pulls.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `<root>/images`.
    pub dir: PathBuf,
    /// A `containers-registries.conf` v2 file (and its `.d` drop-ins);
    /// `None` for the defaults.
    pub registries_config: Option<PathBuf>,
    /// Whether a missing `registries_config` is an error.
    pub registries_config_required: bool,
    pub pull: PullSettings,
}

/// What [`ImageStore::reload`] can change for the pulls that start after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullSettings {
    /// Layers downloaded and unpacked at once per pull.
    pub parallelism: usize,
    /// How often a registry request that failed transiently (dropped
    /// connection, 5xx, 408, 429) is tried again, with doubling back-off.
    pub retries: u32,
    /// A registry that sends nothing for this long fails the pull.
    pub progress_timeout: Duration,
    /// Bytes one layer may unpack to (see [`Limits::max_size`]).
    pub max_layer_size: u64,
}

/// The first pause before a transient failure is tried again; it doubles
/// with each further try.
const RETRY_DELAY: Duration = Duration::from_millis(250);

/// One image: its ID is its config digest; every name it was pulled under is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    pub id: Digest,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// The manifest (and index, if any) blobs this image keeps.
    pub manifests: Vec<Digest>,
    /// Bottom layer first.
    pub chain_ids: Vec<ChainId>,
    /// Sum of the layers' uncompressed sizes.
    pub size: u64,
    pub config: ImageConfig,
    /// Nanoseconds since the epoch of the first pull.
    pub pulled_at: i64,
}

impl Image {
    /// The bare 64-hex ID, as CRI-O reports it.
    pub fn id_hex(&self) -> String {
        self.id.hex()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerRecord {
    chain_id: ChainId,
    diff_id: Digest,
    blob: Digest,
    uncompressed: u64,
    bytes: u64,
    inodes: u64,
}

/// The result of a pull.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub image: Image,
    /// Bytes this pull fetched from the registry: manifests, config and the
    /// layer blobs the store did not have yet.
    pub downloaded: u64,
}

pub struct ImageStore {
    options: StoreOptions,
    /// Replaced whole by [`ImageStore::reload`]; a pull keeps the one it started with.
    registries: RwLock<Arc<RegistriesConfig>>,
    /// Like `registries`: a pull keeps the settings and client it started with.
    pull: RwLock<(PullSettings, Client)>,
    images: Mutex<BTreeMap<Digest, Image>>,
    /// Layers (chain hex) and blobs (digest hex) that pulls in flight use
    /// but have not recorded in an image yet, with how many pulls use each:
    /// garbage collection keeps them. Collection holds this lock while it
    /// picks and moves away what to delete, so a pull never takes up a layer
    /// being collected; a slow pull holds no lock a removal waits on.
    in_flight: Mutex<HashMap<String, usize>>,
    /// Makes each collected entry's name under `tmp/` unique.
    doomed: AtomicUsize,
    /// One lock per chain ID being fetched: concurrent pulls sharing a layer fetch it once.
    layer_locks: Mutex<HashMap<ChainId, Arc<tokio::sync::Mutex<()>>>>,
    /// Images held by [`Pin`]s, with their count. Locked after `images`.
    pins: Mutex<HashMap<Digest, usize>>,
}

/// Keeps one image from removal while alive (see [`ImageStore::get_pinned`]).
pub struct Pin {
    store: Arc<ImageStore>,
    id: Digest,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = berth_host::sync::lock(&self.store.pins);
        if let Some(count) = pins.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                pins.remove(&self.id);
            }
        }
    }
}

impl ImageStore {
    /// Opens the store, cleaning up what a crash left half done.
    pub fn open(options: StoreOptions) -> Result<ImageStore, StoreError> {
        let registries = RegistriesConfig::load(
            options.registries_config.as_deref(),
            options.registries_config_required,
        )?;
        let dir = &options.dir;
        // Root only: layers ship setuid binaries, device nodes and
        // world-writable dirs that no host user may reach.
        for sub in ["blobs/sha256", "layers", "images", "tmp"] {
            let path = dir.join(sub);
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(&path)
            .map_err(StoreError::io(&path))?;
        }
        let tmp = dir.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(StoreError::io(&tmp))? {
            let path = entry.map_err(StoreError::io(&tmp))?.path();
            remove_all(&path).map_err(StoreError::io(&path))?;
        }
        let mut images = BTreeMap::new();
        let mut unreadable = false;
        let records = dir.join("images");
        for entry in std::fs::read_dir(&records).map_err(StoreError::io(&records))? {
            let path = entry.map_err(StoreError::io(&records))?.path();
            let is_record = path.extension().is_some_and(|e| e == "json")
                && !path.file_name().unwrap().to_string_lossy().starts_with('.');
            if !is_record {
                remove_all(&path).map_err(StoreError::io(&path))?;
                continue;
            }
            // One corrupt or half-written record must not keep the node's
            // runtime down (CRI-O skips too): the image is left out and a
            // pull of it rewrites the record. Which layers it had is
            // unknown, and running containers may use them: no garbage
            // collection at this start.
            let read = std::fs::read(&path).map_err(|e| e.to_string());
            match read.and_then(|b| serde_json::from_slice::<Image>(&b).map_err(|e| e.to_string()))
            {
                Ok(image) => {
                    images.insert(image.id.clone(), image);
                }
                Err(err) => {
                    tracing::warn!("skipping unreadable image record {}: {err}", path.display());
                    unreadable = true;
                }
            }
        }
        let store = ImageStore {
            pull: RwLock::new((options.pull, Client::new(options.pull.progress_timeout))),
            options,
            registries: RwLock::new(Arc::new(registries)),
            images: Mutex::new(images),
            in_flight: Mutex::new(HashMap::new()),
            doomed: AtomicUsize::new(0),
            layer_locks: Mutex::new(HashMap::new()),
            pins: Mutex::new(HashMap::new()),
        };
        if !unreadable {
            store.collect_garbage()?;
        }
        Ok(store)
    }

    /// Re-reads the registries config and applies `settings` for pulls
    /// that start from now on. A config that does not load changes
    /// nothing. Returns whether the registries config differs.
    pub fn reload(
        &self,
        registries_config: Option<&Path>,
        required: bool,
        settings: PullSettings,
    ) -> Result<bool, StoreError> {
        let registries = RegistriesConfig::load(registries_config, required)?;
        {
            let mut pull = berth_host::sync::write(&self.pull);
            if pull.0.progress_timeout != settings.progress_timeout {
                pull.1 = Client::new(settings.progress_timeout);
            }
            pull.0 = settings;
        }
        let mut current = berth_host::sync::write(&self.registries);
        let changed = **current != registries;
        *current = Arc::new(registries);
        Ok(changed)
    }

    fn registries(&self) -> Arc<RegistriesConfig> {
        berth_host::sync::read(&self.registries).clone()
    }

    fn layer_dir(&self, chain: &ChainId) -> PathBuf {
        self.options.dir.join("layers").join(chain.0.hex())
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.options.dir.join("blobs/sha256").join(digest.hex())
    }

    fn record_path(&self, id: &Digest) -> PathBuf {
        self.options
            .dir
            .join("images")
            .join(format!("{}.json", id.hex()))
    }

    /// The dir with a layer's files, for an overlay `lowerdir`.
    pub fn layer_diff_dir(&self, chain: &ChainId) -> PathBuf {
        self.layer_dir(chain).join("diff")
    }

    /// An image's layer dirs, top-most first: the order overlayfs wants
    /// in `lowerdir=`.
    pub fn lower_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image
            .chain_ids
            .iter()
            .rev()
            .map(|c| self.layer_diff_dir(c))
            .collect()
    }

    pub fn list(&self) -> Vec<Image> {
        berth_host::sync::lock(&self.images)
            .values()
            .cloned()
            .collect()
    }

    /// Finds an image by ID, unique ID prefix, `sha256:` ID, tag (short names
    /// are qualified as a pull would) or repo digest.
    pub fn get(&self, name: &str) -> Option<Image> {
        let images = berth_host::sync::lock(&self.images);
        // Names first: a short name such as `cafe` is also a valid ID prefix.
        for candidate in self.qualified(name).unwrap_or_default() {
            let tagged = candidate.tagged();
            let by_digest = candidate.digest.as_ref().map(|d| candidate.with_digest(d));
            let hit = images.values().find(|i| {
                by_digest.as_ref().map_or_else(
                    || tagged.as_ref().is_some_and(|t| i.repo_tags.contains(t)),
                    |d| i.repo_digests.contains(d),
                )
            });
            if let Some(hit) = hit {
                return Some(hit.clone());
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found = images.values().filter(|i| i.id.hex().starts_with(hex));
            if let (Some(one), None) = (found.next(), found.next()) {
                return Some(one.clone());
            }
        }
        None
    }

    /// A reference qualified with its registry, or with each unqualified-search registry.
    fn qualified(&self, name: &str) -> Result<Vec<ImageRef>, ReferenceError> {
        let mut parsed = ParsedRef::parse(name)?;
        if parsed.domain.is_none()
            && let Some(target) = self.registries().alias(&parsed.path)
        {
            let aliased = ParsedRef::parse(target)?;
            parsed = ParsedRef {
                domain: aliased.domain,
                path: aliased.path,
                ..parsed
            };
        }
        Ok(match &parsed.domain {
            Some(domain) => vec![parsed.qualify(domain)],
            None => self
                .registries()
                .unqualified_search_registries
                .iter()
                .map(|r| parsed.qualify(r))
                .collect(),
        })
    }

    /// Pulls `name` with `creds`, records it and returns it.
    pub async fn pull(&self, name: &str, creds: &Credentials) -> Result<Pulled, StoreError> {
        let candidates = self.qualified(name)?;
        let given_for = if creds.server_address.is_empty() {
            ParsedRef::parse(name)?.credential_registry()
        } else {
            RegistryHost::from_server_address(&creds.server_address)
        };
        let (settings, client) = berth_host::sync::read(&self.pull).clone();
        let mut last_err = None;
        for image in &candidates {
            let pull = self.pull_one(image, (creds, &given_for), &settings, &client);
            match pull.await {
                Ok(pulled) => return Ok(pulled),
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.expect("at least one candidate registry"))
    }

    async fn pull_one(
        &self,
        image: &ImageRef,
        (creds, given_for): (&Credentials, &RegistryHost),
        settings: &PullSettings,
        client: &Client,
    ) -> Result<Pulled, StoreError> {
        let shown = image.to_string();
        let endpoints = match self.registries().source(image) {
            Source::Blocked(prefix) => {
                return Err(StoreError::Blocked {
                    image: shown,
                    prefix,
                });
            }
            Source::Endpoints(endpoints) => endpoints,
        };
        let anonymous = Credentials::default();
        let mut last_err = None;
        for endpoint in &endpoints {
            let shown = &shown;
            // Credentials go to the registry they were given for only: not
            // to a mirror, a rewritten location or another search registry.
            let creds = if endpoint.registry() == *given_for {
                creds
            } else {
                if !creds.is_empty() {
                    tracing::debug!(
                        registry = %endpoint.host,
                        given_for = %given_for,
                        "credentials withheld from a registry they were not given for"
                    );
                }
                &anonymous
            };
            let connect = || async move {
                client
                    .session(endpoint, creds)
                    .await
                    .map_err(|source| StoreError::Client {
                        image: shown.clone(),
                        source,
                    })
            };
            let session = match retrying(settings.retries, connect).await {
                Ok(session) => session,
                Err(err) => {
                    last_err = Some(err);
                    continue;
                }
            };
            match self.pull_from(image, &session, settings).await {
                // A mirror that lacks the image, refuses us or is down: try
                // the next one, then the origin. Bad content stops the pull.
                Err(err @ StoreError::Client { .. }) => last_err = Some(err),
                other => return other,
            }
        }
        Err(last_err.expect("at least one endpoint"))
    }

    /// One pull from one endpoint, its steps in order: manifest (index
    /// resolved), config, layers, record. Long because each step's error
    /// names the image and the step, and splitting it would pass half a pull
    /// around in a struct.
    async fn pull_from(
        &self,
        image: &ImageRef,
        session: &Session,
        settings: &PullSettings,
    ) -> Result<Pulled, StoreError> {
        let retries = settings.retries;
        let shown = image.to_string();
        let client_err = |source| StoreError::Client {
            image: shown.clone(),
            source,
        };
        let manifest_err = |source| StoreError::Manifest {
            image: shown.clone(),
            source,
        };
        let reference = match (&image.digest, &image.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        };
        let reference = &reference;
        let (content_type, body) = retrying(retries, || async move {
            session.manifest(reference).await.map_err(client_err)
        })
        .await?;
        let top_digest = Digest::of(&body);
        if let Some(want) = &image.digest
            && *want != top_digest
        {
            return Err(StoreError::DigestMismatch {
                image: shown,
                what: format!("manifest {reference}"),
                expected: want.clone(),
                actual: top_digest,
            });
        }
        let mut blobs = vec![(top_digest.clone(), body.clone())];
        let manifest = match Manifest::parse(&shown, &content_type, &body).map_err(manifest_err)? {
            Manifest::Image(m) => m,
            Manifest::Index(list) => {
                let chosen = crate::manifest::select(&shown, &list, &Platform::host())
                    .map_err(manifest_err)?;
                let platform_digest = &chosen.digest.to_string();
                let (ct, body) = retrying(retries, || async move {
                    session.manifest(platform_digest).await.map_err(client_err)
                })
                .await?;
                self.verify(&shown, "platform manifest", &chosen.digest, &body)?;
                blobs.push((chosen.digest.clone(), body.clone()));
                match Manifest::parse(&shown, &ct, &body).map_err(manifest_err)? {
                    Manifest::Image(m) => m,
                    Manifest::Index(_) => {
                        return Err(manifest_err(ManifestError::MediaType {
                            reference: chosen.digest.to_string(),
                            media_type: "a nested image index".into(),
                        }));
                    }
                }
            }
        };
        let manifest = &manifest;
        let config_bytes = retrying(retries, || async move {
            let resp = session
                .blob(&manifest.config.digest)
                .await
                .map_err(client_err)?;
            session
                .read_capped(resp, &format!("config {}", manifest.config.digest))
                .await
                .map_err(client_err)
        })
        .await?;
        self.verify(&shown, "config", &manifest.config.digest, &config_bytes)?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes).map_err(|source| {
            manifest_err(ManifestError::Json {
                reference: manifest.config.digest.to_string(),
                source,
            })
        })?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(StoreError::LayerCount {
                image: shown,
                config: manifest.config.digest.clone(),
                diff_ids: diff_ids.len(),
                layers: manifest.layers.len(),
            });
        }
        let chain_ids = ChainId::chain(diff_ids);
        // Before any layer is looked at: collection keeps them from now on.
        let _in_flight = self.mark_in_flight(
            chain_ids
                .iter()
                .map(|c| c.0.hex())
                .chain(blobs.iter().map(|(d, _)| d.hex()))
                .chain([manifest.config.digest.hex()])
                .collect(),
        );

        // Layers in parallel, bounded; the first failure cancels the rest.
        let limit = Arc::new(tokio::sync::Semaphore::new(settings.parallelism.max(1)));
        let jobs =
            manifest
                .layers
                .iter()
                .zip(diff_ids)
                .zip(&chain_ids)
                .map(|((desc, diff_id), chain)| {
                    let limit = limit.clone();
                    let shown = shown.clone();
                    async move {
                        let _permit = limit.acquire().await.expect("semaphore never closed");
                        self.ensure_layer(&shown, session, settings, desc, diff_id, chain)
                            .await
                    }
                });
        let layers = futures_util::future::try_join_all(jobs).await?;

        blobs.push((manifest.config.digest.clone(), config_bytes.to_vec()));
        for (digest, bytes) in &blobs {
            let path = self.blob_path(digest);
            if !path.exists() {
                write_private(&path, bytes).map_err(StoreError::io(&path))?;
            }
        }
        let repo_digest = image.with_digest(&top_digest);
        let fresh = Image {
            id: manifest.config.digest.clone(),
            repo_tags: image.tagged().into_iter().collect(),
            repo_digests: vec![repo_digest],
            manifests: blobs[..blobs.len() - 1]
                .iter()
                .map(|(d, _)| d.clone())
                .collect(),
            chain_ids: chain_ids.clone(),
            size: layers.iter().map(|(l, _)| l.uncompressed).sum(),
            config,
            pulled_at: berth_host::now_nanos(),
        };
        let downloaded = blobs.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
            + layers.iter().map(|(_, fetched)| fetched).sum::<u64>();
        let record = self.record_pull(fresh)?;
        Ok(Pulled {
            image: record,
            downloaded,
        })
    }

    fn verify(
        &self,
        image: &str,
        what: &str,
        want: &Digest,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let actual = Digest::of(bytes);
        if actual != *want {
            return Err(StoreError::DigestMismatch {
                image: image.into(),
                what: what.into(),
                expected: want.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Records a pulled image, merged with the record it already has (if
    /// pulled before under other names), in one critical section so
    /// concurrent pulls of one image keep every name. A tag names one
    /// image: it moves off any other image that had it.
    fn record_pull(&self, pulled: Image) -> Result<Image, StoreError> {
        let mut images = berth_host::sync::lock(&self.images);
        let mut record = images.get(&pulled.id).cloned().unwrap_or_else(|| Image {
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            manifests: Vec::new(),
            ..pulled.clone()
        });
        for tag in &pulled.repo_tags {
            push_unique(&mut record.repo_tags, tag.clone());
        }
        for digest in &pulled.repo_digests {
            push_unique(&mut record.repo_digests, digest.clone());
        }
        for manifest in &pulled.manifests {
            push_unique(&mut record.manifests, manifest.clone());
        }
        let losers: Vec<Image> = images
            .values()
            .filter(|i| {
                i.id != record.id && i.repo_tags.iter().any(|t| pulled.repo_tags.contains(t))
            })
            .cloned()
            .collect();
        for mut loser in losers {
            loser.repo_tags.retain(|t| !pulled.repo_tags.contains(t));
            self.write_record(&loser)?;
            images.insert(loser.id.clone(), loser);
        }
        self.write_record(&record)?;
        images.insert(record.id.clone(), record.clone());
        Ok(record)
    }

    fn write_record(&self, record: &Image) -> Result<(), StoreError> {
        let path = self.record_path(&record.id);
        let json = serde_json::to_vec_pretty(record).expect("image records serialize");
        write_private(&path, &json).map_err(StoreError::io(&path))
    }

    async fn ensure_layer(
        &self,
        image: &str,
        session: &Session,
        settings: &PullSettings,
        desc: &Descriptor,
        diff_id: &Digest,
        chain: &ChainId,
    ) -> Result<(LayerRecord, u64), StoreError> {
        let lock = berth_host::sync::lock(&self.layer_locks)
            .entry(chain.clone())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        let max_size = settings.max_layer_size;
        let result = retrying(settings.retries, || async move {
            self.fetch_layer_once(image, session, desc, diff_id, chain, max_size)
                .await
        })
        .await;
        drop(_held);
        // Forget the lock once nobody else waits on it.
        let mut locks = berth_host::sync::lock(&self.layer_locks);
        if Arc::strong_count(&lock) == 2 {
            locks.remove(chain);
        }
        result
    }

    /// The layer's record, and the blob bytes downloaded for it (0 when the
    /// store already had it).
    async fn fetch_layer_once(
        &self,
        image: &str,
        session: &Session,
        desc: &Descriptor,
        diff_id: &Digest,
        chain: &ChainId,
        max_size: u64,
    ) -> Result<(LayerRecord, u64), StoreError> {
        let dir = self.layer_dir(chain);
        let meta_path = dir.join("layer.json");
        if let Ok(bytes) = std::fs::read(&meta_path)
            && let Ok(record) = serde_json::from_slice::<LayerRecord>(&bytes)
        {
            return Ok((record, 0));
        }
        // Shared with the blocking tasks that write and walk it: a pull
        // cancelled mid-layer removes the dir only once they have stopped.
        let tmp = Arc::new(
            tempfile::Builder::new()
                .prefix(&format!("{}-", chain.0.hex()))
                .tempdir_in(self.options.dir.join("tmp"))
                .map_err(StoreError::io(&self.options.dir))?,
        );
        let diff = tmp.path().join("diff");
        std::fs::create_dir(&diff).map_err(StoreError::io(&diff))?;
        let uncompressed = self
            .stream_layer(image, session, desc, diff_id, &tmp, max_size)
            .await?;
        let usage = {
            let (diff, held) = (diff.clone(), tmp.clone());
            tokio::task::spawn_blocking(move || {
                let usage = unpack::usage(&diff);
                drop(held);
                usage
            })
            .await
            .expect("usage walk does not panic")
            .map_err(StoreError::io(tmp.path()))?
        };
        let record = LayerRecord {
            chain_id: chain.clone(),
            diff_id: diff_id.clone(),
            blob: desc.digest.clone(),
            uncompressed,
            bytes: usage.bytes,
            inodes: usage.inodes,
        };
        let json = serde_json::to_vec_pretty(&record).expect("layer records serialize");
        let tmp_meta = tmp.path().join("layer.json");
        write_private(&tmp_meta, &json).map_err(StoreError::io(&tmp_meta))?;
        // A half-removed layer of a failed earlier attempt cannot be here:
        // layers without layer.json are only ever in tmp/.
        let tmp = Arc::into_inner(tmp)
            .expect("the blocking tasks have finished")
            .keep();
        std::fs::rename(&tmp, &dir).map_err(|source| {
            let _ = std::fs::remove_dir_all(&tmp);
            StoreError::Io {
                path: dir.clone(),
                source,
            }
        })?;
        // The digest was verified, so exactly the descriptor's size came in.
        Ok((record, desc.size))
    }

    /// Downloads, verifies and unpacks one layer blob into `dest`; the
    /// download streams straight into the decompressor and the tar reader.
    /// Returns the uncompressed size.
    async fn stream_layer(
        &self,
        image: &str,
        session: &Session,
        desc: &Descriptor,
        diff_id: &Digest,
        tmp: &Arc<tempfile::TempDir>,
        max_size: u64,
    ) -> Result<u64, StoreError> {
        let compression = Compression::of(desc).map_err(|source| StoreError::Manifest {
            image: image.into(),
            source,
        })?;
        let resp = session
            .blob(&desc.digest)
            .await
            .map_err(|source| StoreError::Client {
                image: image.into(),
                source,
            })?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(64);
        let (unpacker, _stop) = spawn_unpacker(rx, compression, tmp.clone(), max_size);

        let mut hasher = Sha256::new();
        let mut stream = resp.bytes_stream();
        let mut failure = None;
        let mut unpacker_alive = true;
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    received += chunk.len() as u64;
                    if received > desc.size {
                        // More than the manifest promised: stop before it fills the disk.
                        let _ = tx
                            .send(Chunk::Failed("blob larger than its descriptor"))
                            .await;
                        failure = Some(StoreError::Client {
                            image: image.into(),
                            source: ClientError::TooLarge {
                                registry: session.registry().into(),
                                what: format!("layer blob {}", desc.digest),
                                limit: desc.size as usize,
                            },
                        });
                        break;
                    }
                    hasher.update(&chunk);
                    // If the unpacker failed, keep hashing: a corrupt blob
                    // is reported as a digest mismatch, not as a bad tar.
                    if unpacker_alive && tx.send(Chunk::Data(chunk)).await.is_err() {
                        unpacker_alive = false;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Chunk::Failed("download failed")).await;
                    failure = Some(StoreError::Client {
                        image: image.into(),
                        source: session.stream_error(&desc.digest, e),
                    });
                    break;
                }
            }
        }
        if failure.is_none() {
            let actual = Digest::from_hasher(hasher);
            if actual != desc.digest {
                // The unpacker sees an error instead of the end of the stream.
                let _ = tx.send(Chunk::Failed("blob digest mismatch")).await;
                failure = Some(StoreError::DigestMismatch {
                    image: image.into(),
                    what: format!("layer blob {}", desc.digest),
                    expected: desc.digest.clone(),
                    actual,
                });
            }
        }
        if failure.is_none() {
            let _ = tx.send(Chunk::End).await;
        }
        drop(tx);
        let unpacked = unpacker.await.expect("unpacker does not panic");
        if let Some(failure) = failure {
            return Err(failure);
        }
        let (actual_diff_id, size) = unpacked.map_err(|source| StoreError::Unpack {
            image: image.into(),
            layer: desc.digest.clone(),
            source,
        })?;
        if actual_diff_id != *diff_id {
            return Err(StoreError::DigestMismatch {
                image: image.into(),
                what: format!("uncompressed layer {}", desc.digest),
                expected: diff_id.clone(),
                actual: actual_diff_id,
            });
        }
        Ok(size)
    }

    /// [`ImageStore::get`], with the image kept from removal until the pin
    /// is dropped: CreateContainer holds it until its record names the
    /// image, so no RemoveImage slips in between. Never waits on a pull.
    pub fn get_pinned(self: &Arc<Self>, name: &str) -> Option<(Image, Pin)> {
        let image = self.get(name)?;
        let images = berth_host::sync::lock(&self.images);
        // Still recorded: a removal that ran since `get` finished before this.
        images.get(&image.id)?;
        *berth_host::sync::lock(&self.pins)
            .entry(image.id.clone())
            .or_default() += 1;
        let id = image.id.clone();
        let store = Arc::clone(self);
        Some((image, Pin { store, id }))
    }

    /// Removes the image `name` names unless `users` (given the image ID in
    /// hex) names containers that use it; an unknown name is not an error.
    pub async fn remove(
        &self,
        name: &str,
        users: impl FnOnce(&str) -> Vec<String>,
    ) -> Result<(), StoreError> {
        let Some(image) = self.get(name) else {
            return Ok(());
        };
        // Under the lock pins are taken with: a create either pinned the
        // image before (and is seen here or among `users`) or finds it gone.
        let mut images = berth_host::sync::lock(&self.images);
        if !images.contains_key(&image.id) {
            // A concurrent removal got here first.
            return Ok(());
        }
        let mut containers = users(&image.id_hex());
        if berth_host::sync::lock(&self.pins).contains_key(&image.id) {
            containers.push("(one being created)".into());
        }
        if !containers.is_empty() {
            return Err(StoreError::InUse {
                image: name.to_string(),
                containers,
            });
        }
        let path = self.record_path(&image.id);
        remove_all(&path).map_err(StoreError::io(&path))?;
        images.remove(&image.id);
        drop(images);
        self.collect_garbage()
    }

    /// Marks layers and blobs as used by a pull in flight until the
    /// returned guard drops.
    fn mark_in_flight(&self, keys: Vec<String>) -> InFlight<'_> {
        let mut in_flight = berth_host::sync::lock(&self.in_flight);
        for key in &keys {
            *in_flight.entry(key.clone()).or_default() += 1;
        }
        InFlight { store: self, keys }
    }

    /// Removes layers and blobs neither an image record nor a pull in
    /// flight uses. Runs every step and reports the first failure.
    fn collect_garbage(&self) -> Result<(), StoreError> {
        let in_flight = berth_host::sync::lock(&self.in_flight);
        let (chains, blobs): (HashSet<String>, HashSet<String>) = {
            let images = berth_host::sync::lock(&self.images);
            (
                images
                    .values()
                    .flat_map(|i| i.chain_ids.iter().map(|c| c.0.hex()))
                    .collect(),
                images
                    .values()
                    .flat_map(|i| i.manifests.iter().chain([&i.id]).map(Digest::hex))
                    .collect(),
            )
        };
        let mut first_err = None;
        let mut doomed = Vec::new();
        for (sub, keep) in [("layers", &chains), ("blobs/sha256", &blobs)] {
            let dir = self.options.dir.join(sub);
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) => {
                    first_err.get_or_insert(StoreError::Io {
                        path: dir,
                        source: e,
                    });
                    continue;
                }
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) || in_flight.contains_key(&name) {
                    continue;
                }
                // Rename first so a crash mid-delete never leaves a half layer under layers/.
                let n = self.doomed.fetch_add(1, Ordering::Relaxed);
                let to = self.options.dir.join("tmp").join(format!("gc-{n}-{name}"));
                match std::fs::rename(entry.path(), &to) {
                    Ok(()) => doomed.push(to),
                    Err(e) => {
                        first_err.get_or_insert(StoreError::Io {
                            path: entry.path(),
                            source: e,
                        });
                    }
                }
            }
        }
        // Out of layers/ and blobs/ now: pulls need not wait for the deletion.
        drop(in_flight);
        for path in doomed {
            if let Err(e) = remove_all(&path) {
                first_err.get_or_insert(StoreError::Io { path, source: e });
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Bytes and inodes the store uses on disk.
    pub fn usage(&self) -> Usage {
        let mut usage = Usage::default();
        let layers = self.options.dir.join("layers");
        for entry in std::fs::read_dir(&layers).into_iter().flatten().flatten() {
            if let Ok(bytes) = std::fs::read(entry.path().join("layer.json"))
                && let Ok(record) = serde_json::from_slice::<LayerRecord>(&bytes)
            {
                usage.bytes += record.bytes;
                usage.inodes += record.inodes;
            }
        }
        for sub in ["blobs/sha256", "images"] {
            for entry in std::fs::read_dir(self.options.dir.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(meta) = entry.metadata() {
                    use std::os::unix::fs::MetadataExt;
                    usage.bytes += meta.blocks() * 512;
                    usage.inodes += 1;
                }
            }
        }
        usage
    }

    /// The store's directory (`<root>/images`), reported as the image filesystem.
    pub fn dir(&self) -> &Path {
        &self.options.dir
    }
}

/// Runs `attempt`, and again after a doubling pause while it fails
/// transiently, at most `retries` more times.
async fn retrying<T, F>(retries: u32, mut attempt: impl FnMut() -> F) -> Result<T, StoreError>
where
    F: Future<Output = Result<T, StoreError>>,
{
    let mut delay = RETRY_DELAY;
    for _ in 0..retries {
        match attempt().await {
            Err(err) if err.is_transient() => {
                tracing::warn!("{err}; trying again in {delay:?}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            done => return done,
        }
    }
    attempt().await
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// What the downloader hands the unpacker.
enum Chunk {
    Data(Bytes),
    /// The whole blob was received and its digest verified.
    End,
    Failed(&'static str),
}

/// Reads chunks from the downloader as a byte stream. Only an explicit
/// [`Chunk::End`] is the end: a downloader that vanished (a cancelled
/// pull) is an error, so a truncated layer never looks complete.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    current: Bytes,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(chunk)) => self.current = chunk,
                Some(Chunk::End) => self.ended = true,
                Some(Chunk::Failed(why)) => return Err(io::Error::other(why)),
                None => return Err(io::Error::other("the download was abandoned")),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Sets its flag when dropped: when the pull future is dropped (the CRI
/// call was cancelled or timed out) the unpacker thread stops too, instead
/// of decompressing on with no one waiting, and removes its dir.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The unpacker's answer: the layer's diff ID and uncompressed size.
type Unpacker = tokio::task::JoinHandle<Result<(Digest, u64), UnpackError>>;

/// Unpacks what arrives on `rx` into `<tmp>/diff` on a blocking thread,
/// which holds `tmp` until it ends. Dropping the [`StopOnDrop`] stops it.
fn spawn_unpacker(
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    compression: Compression,
    tmp: Arc<tempfile::TempDir>,
    max_size: u64,
) -> (Unpacker, StopOnDrop) {
    let limits = Limits {
        max_size,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let stop = StopOnDrop(limits.cancel.clone());
    let unpacker = tokio::task::spawn_blocking(move || {
        let unpacked = unpack_stream(rx, compression, &tmp.path().join("diff"), &limits);
        drop(tmp);
        unpacked
    });
    (unpacker, stop)
}

/// Hashes and counts what passes through: the diff ID of the tar stream.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

fn unpack_stream(
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    compression: Compression,
    dest: &Path,
    limits: &Limits,
) -> Result<(Digest, u64), UnpackError> {
    let mut raw = ChannelReader {
        rx,
        current: Bytes::new(),
        ended: false,
    };
    let (diff_id, count) = {
        let decompressed: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut raw),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut raw)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(&mut raw).map_err(UnpackError::Read)?)
            }
        };
        let mut tar = Hashing {
            inner: decompressed,
            hasher: Sha256::new(),
            count: 0,
        };
        unpack::unpack(&mut tar, dest, limits)?;
        (Digest::from_hasher(tar.hasher), tar.count)
    };
    // Read the raw stream to its end: the end only comes once the
    // downloader has checked the blob digest.
    io::copy(&mut raw, &mut io::sink()).map_err(UnpackError::Read)?;
    Ok((diff_id, count))
}

/// Layers and blobs a pull in flight uses; unpinned on drop.
struct InFlight<'a> {
    store: &'a ImageStore,
    keys: Vec<String>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = berth_host::sync::lock(&self.store.in_flight);
        for key in &self.keys {
            if let Some(count) = in_flight.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    in_flight.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(parallelism: usize) -> PullSettings {
        PullSettings {
            parallelism,
            retries: 3,
            progress_timeout: Duration::from_secs(300),
            max_layer_size: unpack::DEFAULT_MAX_LAYER_SIZE,
        }
    }

    fn blocked(prefix: &str) -> String {
        format!("[[registry]]\nprefix = \"{prefix}\"\nblocked = true\n")
    }

    async fn refused(store: &ImageStore, name: &str) -> bool {
        matches!(
            store.pull(name, &Credentials::default()).await,
            Err(StoreError::Blocked { .. })
        )
    }

    #[tokio::test]
    async fn reload_applies_a_new_registries_config_and_keeps_the_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("registries.conf");
        std::fs::write(&conf, blocked("a.example")).unwrap();
        let store = ImageStore::open(StoreOptions {
            dir: dir.path().join("images"),
            registries_config: Some(conf.clone()),
            registries_config_required: true,
            pull: settings(4),
        })
        .unwrap();
        assert!(refused(&store, "a.example/x:1").await);

        std::fs::write(&conf, blocked("b.example")).unwrap();
        assert!(store.reload(Some(&conf), true, settings(2)).unwrap());
        assert!(
            !store.reload(Some(&conf), true, settings(2)).unwrap(),
            "same content"
        );
        assert!(refused(&store, "b.example/x:1").await);
        // Unblocked now (checked on the config: a pull would go to the network).
        assert!(
            store
                .registries()
                .registry
                .iter()
                .all(|r| r.prefix != "a.example")
        );

        std::fs::write(&conf, "[[registry]\nbroken").unwrap();
        let err = store
            .reload(Some(&conf), true, settings(8))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&conf.display().to_string()), "{err}");
        assert!(refused(&store, "b.example/x:1").await);
        assert_eq!(berth_host::sync::read(&store.pull).0, settings(2));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_dropped_pull_stops_its_unpacker_and_removes_its_dir() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = Arc::new(tempfile::tempdir_in(dir.path()).unwrap());
        let path = tmp.path().to_path_buf();
        std::fs::create_dir(path.join("diff")).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // A 60 GiB sparse file: the unpacker walks its hole with no more input.
        let layer = unpack::tests::sparse("hole", 60 << 30, 0);
        tx.send(Chunk::Data(layer.into())).await.unwrap();
        let (unpacker, stop) =
            spawn_unpacker(rx, Compression::None, tmp, unpack::DEFAULT_MAX_LAYER_SIZE);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!unpacker.is_finished());
        // What dropping the pull future drops; the downloader's sender stays.
        drop(stop);
        let unpacked = tokio::time::timeout(Duration::from_secs(5), unpacker)
            .await
            .expect("the unpacker stops")
            .unwrap();
        assert!(
            matches!(unpacked, Err(UnpackError::Cancelled)),
            "{unpacked:?}"
        );
        assert!(!path.exists(), "the half-unpacked layer is removed");
        drop(tx);
    }

    #[test]
    fn collection_keeps_what_a_pull_in_flight_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(StoreOptions {
            dir: dir.path().join("images"),
            registries_config: None,
            registries_config_required: false,
            pull: settings(1),
        })
        .unwrap();
        let (chain, blob) = ("a".repeat(64), "b".repeat(64));
        let layer = store.options.dir.join("layers").join(&chain);
        let blob_path = store.options.dir.join("blobs/sha256").join(&blob);
        std::fs::create_dir_all(layer.join("diff")).unwrap();
        std::fs::write(&blob_path, b"{}").unwrap();

        let pulling = store.mark_in_flight(vec![chain.clone(), blob.clone()]);
        // A second pull of the same layer, done before the first.
        drop(store.mark_in_flight(vec![chain.clone()]));
        store.collect_garbage().unwrap();
        assert!(layer.exists() && blob_path.exists());

        drop(pulling);
        store.collect_garbage().unwrap();
        assert!(!layer.exists() && !blob_path.exists());
        let tmp = std::fs::read_dir(store.options.dir.join("tmp")).unwrap();
        assert_eq!(tmp.count(), 0, "collected entries are deleted");
    }
}
