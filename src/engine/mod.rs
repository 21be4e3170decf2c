//! What dos needs of a container engine, and nothing else. The rest of dos
//! talks to an [`Engine`] and never asks which one it is.
//!
//! | engine | image ID | a partial image loads as | what the far side reports it holds |
//! |---|---|---|---|
//! | Docker, classic store ([`classic`]) | config digest | a `docker save` archive without the layers it has | layers by chainID |
//! | Docker, containerd image store ([`containerd`]) | manifest digest | an OCI layout whose manifest names the blobs it holds | the blobs' descriptors, read through a push ([`probe`]) |
//! | podman ([`podman`]) | config digest | the same OCI layout | layers by diffID |
//!
//! The engine is detected from the daemon (`docker version` and `docker
//! info`), never configured.
//!
//! "The same image" across engines: the config digest and the diffIDs are
//! always the source's; the image ID is the source's where both ends name
//! images the same way ([`Ids`]).

pub mod classic;
pub mod containerd;
pub mod oci;
pub mod podman;
pub mod probe;

use std::collections::HashMap;
use std::fmt;

use anyhow::{Context, Result};
use bollard::query_parameters::ListImagesOptionsBuilder;
use futures_util::{stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::docker::Daemon;
use oci::Descriptor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Classic,
    Containerd,
    Podman,
}

/// How an engine names an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ids {
    /// By the digest of its config (classic store, podman).
    Config,
    /// By the digest of its manifest (containerd image store).
    Manifest,
}

/// How a partial image is handed to the engine's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A `docker save` archive; layers the engine has are left out.
    DockerArchive,
    /// An OCI image layout; layers the engine has are named in the manifest
    /// by the descriptors it holds them under, and left out.
    Oci,
}

/// A connected daemon and which engine it is.
#[derive(Clone)]
pub struct Engine {
    pub daemon: Daemon,
    kind: Kind,
    version: String,
}

/// An image on the local engine, as a transfer needs it.
#[derive(Debug, Clone)]
pub struct Image {
    /// The engine's ID for it.
    pub id: String,
    /// The digest of its config (the same on every engine).
    pub config: String,
    /// Its layers, bottom first.
    pub diff_ids: Vec<String>,
    /// Uncompressed size, as the engine reports it.
    pub size: u64,
    /// Layer blobs its export holds other than as plain tars, by digest
    /// (the containerd store keeps gzip or zstd blobs as they came).
    pub packed: HashMap<String, Packed>,
    /// The manifest's bytes as the store holds them, where the engine names
    /// images by their manifest: sent along so that a far store of the
    /// same kind can hold the same manifest, so the same ID.
    pub manifest: Option<Vec<u8>>,
}

/// A compressed layer blob: which layer it is, and how it is compressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub diff_id: String,
    pub compression: Compression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    /// From a layer's media type; None for a plain tar (or unknown).
    pub fn of(media_type: &str) -> Option<Compression> {
        if media_type.ends_with("gzip") {
            Some(Compression::Gzip)
        } else if media_type.ends_with("zstd") {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// What the far engine already has of an image.
#[derive(Debug, Clone, Default)]
pub struct Holding {
    /// The whole image is here.
    pub image: Option<Loaded>,
    /// Its first `layers` layers are here.
    pub layers: usize,
    /// The descriptors the store holds those layers under, when its load
    /// needs them named (one per held layer).
    pub held: Vec<Descriptor>,
    /// The load needs the pusher to say how long each held layer's tar is.
    pub needs_sizes: bool,
}

/// An image on the far engine, in the engine's words: its ID and layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub id: String,
    pub diff_ids: Vec<String>,
}

impl Engine {
    /// Connect the way the docker CLI does (DOCKER_HOST) and detect the engine.
    pub async fn connect() -> Result<Engine> {
        Engine::detect(Daemon::connect().await?).await
    }

    pub async fn connect_to(host: &str) -> Result<Engine> {
        Engine::detect(Daemon::connect_to(host).await?).await
    }

    pub async fn detect(daemon: Daemon) -> Result<Engine> {
        let version = daemon
            .api
            .version()
            .await
            .context("asking the daemon for its version")?;
        let podman = version
            .components
            .iter()
            .flatten()
            .any(|c| c.name.to_ascii_lowercase().contains("podman"));
        let release = version.version.clone().unwrap_or_default();
        let kind = if podman {
            Kind::Podman
        } else {
            let info = daemon
                .api
                .info()
                .await
                .context("asking the daemon for its info")?;
            let snapshotter = info
                .driver_status
                .unwrap_or_default()
                .iter()
                .any(|kv| kv.iter().any(|v| v.contains("io.containerd.snapshotter")));
            if snapshotter {
                Kind::Containerd
            } else {
                Kind::Classic
            }
        };
        tracing::debug!(engine = %describe(kind, &release), host = %daemon.host, "engine detected");
        Ok(Engine {
            daemon,
            kind,
            version: release,
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn ids(&self) -> Ids {
        match self.kind {
            Kind::Containerd => Ids::Manifest,
            Kind::Classic | Kind::Podman => Ids::Config,
        }
    }

    pub fn layout(&self) -> Layout {
        match self.kind {
            Kind::Classic => Layout::DockerArchive,
            Kind::Containerd | Kind::Podman => Layout::Oci,
        }
    }

    /// Can the delta path read this engine's layers (as the pushing side)?
    /// Both Docker stores export them; podman is only a far side here.
    pub fn reads_layers(&self) -> bool {
        matches!(self.kind, Kind::Classic | Kind::Containerd)
    }

    /// Do the classic store's own readers apply (its layer store read
    /// directly, the capture registry that learns what the daemon pushed)?
    pub fn classic_readers(&self) -> bool {
        self.kind == Kind::Classic
    }

    /// How a push from this engine reads the layers, in words.
    pub fn reading(&self) -> &'static str {
        match self.kind {
            Kind::Classic => "from its layer store (as root, on its machine), else from what it pushes into the capture registry, else from docker save",
            Kind::Containerd => "from docker save, its compressed blobs crossing as the store holds them",
            Kind::Podman => "not at all: dos pushes from Docker; podman is a far side",
        }
    }

    /// The ID this engine gives an image with this manifest and config.
    pub fn id_for<'a>(&self, manifest: &'a str, config: &'a str) -> &'a str {
        match self.ids() {
            Ids::Manifest => manifest,
            Ids::Config => config,
        }
    }

    /// The local image `name`.
    pub async fn image(&self, name: &str) -> Result<Image> {
        let info = self.daemon.inspect(name).await?;
        let id = info.id.context("the daemon reported no image ID")?;
        let diff_ids = info.root_fs.and_then(|r| r.layers).unwrap_or_default();
        let (config, packed, manifest) = match self.ids() {
            Ids::Config => (id.clone(), HashMap::new(), None),
            Ids::Manifest => {
                let (m, body) = containerd::manifest_of(self, &id, &diff_ids).await?;
                let packed = m
                    .layers
                    .iter()
                    .zip(&diff_ids)
                    .filter_map(|(l, d)| {
                        Compression::of(&l.media_type).map(|compression| {
                            let p = Packed {
                                diff_id: d.clone(),
                                compression,
                            };
                            (l.digest.clone(), p)
                        })
                    })
                    .collect();
                (m.config.digest, packed, Some(body))
            }
        };
        Ok(Image {
            id,
            config,
            diff_ids,
            size: info.size.unwrap_or(0).max(0) as u64,
            packed,
            manifest,
        })
    }

    /// What this engine has of the image with `config` and `diff_ids`
    /// (whose manifest at the source has the digest `manifest`, if known).
    pub async fn holding(
        &self,
        config: &str,
        diff_ids: &[String],
        manifest: Option<&str>,
    ) -> Result<Holding> {
        match self.kind {
            Kind::Classic => classic::holding(self, config, diff_ids).await,
            Kind::Containerd => containerd::holding(self, config, diff_ids, manifest).await,
            Kind::Podman => podman::holding(self, config, diff_ids).await,
        }
    }

    /// Check what a load of an image with `config` (the manifest dos wrote
    /// for it: `manifest`) produced: the image is there, whole, with the
    /// expected layers. An image the load left incomplete is removed.
    pub async fn verify(
        &self,
        manifest: Option<&str>,
        config: &str,
        diff_ids: &[String],
    ) -> Result<Loaded> {
        let id = self.id_for(manifest.unwrap_or(config), config).to_string();
        let checked = async {
            let info = self
                .daemon
                .inspect(&id)
                .await
                .map_err(|_| anyhow::anyhow!("the load did not produce image {id}"))?;
            let layers = info.root_fs.and_then(|r| r.layers).unwrap_or_default();
            if layers != diff_ids {
                anyhow::bail!("the loaded image {id} has layers {layers:?}, expected {diff_ids:?}");
            }
            if self.kind == Kind::Containerd {
                containerd::check_complete(self, &id).await?;
            }
            Ok(layers)
        }
        .await;
        match checked {
            Ok(diff_ids) => Ok(Loaded { id, diff_ids }),
            Err(e) => {
                self.remove_image(&id).await;
                Err(e)
            }
        }
    }

    /// Pull `name@digest` from the registry on this machine's loopback
    /// (the relay), with `creds`.
    pub async fn pull_relayed(
        &self,
        name: &str,
        digest: &str,
        creds: bollard::auth::DockerCredentials,
    ) -> Result<()> {
        match self.kind {
            Kind::Podman => podman::pull(self, &format!("{name}@{digest}"), &creds).await,
            Kind::Classic | Kind::Containerd => self.daemon.pull(name, digest, creds).await,
        }
    }

    /// After a pull of `manifest` from `registry`: the image is whole (an
    /// engine that may leave it incomplete has it completed from there).
    pub async fn complete_pull(
        &self,
        registry: &crate::registry::client::Client,
        manifest: &str,
    ) -> Result<()> {
        match self.kind {
            Kind::Containerd => containerd::complete(self, registry, manifest).await,
            Kind::Classic | Kind::Podman => Ok(()),
        }
    }

    /// Remove an image dos made (an incomplete load). A failure is logged:
    /// the caller is already reporting a worse one.
    pub async fn remove_image(&self, id: &str) {
        match self.daemon.remove_image(id).await {
            Ok(()) => tracing::info!("dos: removed the incomplete image {id}"),
            Err(e) => tracing::warn!("dos: could not remove the incomplete image {id}: {e:#}"),
        }
    }

    /// Every image on the engine with its layers, bottom first.
    async fn all_layers(&self) -> Result<Vec<(String, Vec<String>)>> {
        let opts = ListImagesOptionsBuilder::default().all(true).build();
        let images = self
            .daemon
            .api
            .list_images(Some(opts))
            .await
            .context("listing the daemon's images")?;
        Ok(self.layers_of(images.into_iter().map(|i| i.id)).await)
    }

    /// The images `ids` with their layers, bottom first (none for an image
    /// that no longer inspects).
    async fn layers_of(&self, ids: impl Iterator<Item = String>) -> Vec<(String, Vec<String>)> {
        stream::iter(ids)
            .map(|id| async move {
                let layers = self
                    .daemon
                    .api
                    .inspect_image(&id)
                    .await
                    .ok()
                    .and_then(|i| i.root_fs)
                    .and_then(|r| r.layers)
                    .unwrap_or_default();
                (id, layers)
            })
            .buffer_unordered(8)
            .collect()
            .await
    }
}

/// How many leading layers of `diff_ids` the image among `images` sharing
/// the most has, and that image (the first found). Layers count only as a
/// run from the bottom: a layer's place in an image (its chainID) covers
/// every layer below it.
fn longest_prefix<'a>(
    diff_ids: &[String],
    images: &'a [(String, Vec<String>)],
) -> (usize, Option<&'a (String, Vec<String>)>) {
    let mut best = (0, None);
    for image in images {
        let n = diff_ids
            .iter()
            .zip(&image.1)
            .take_while(|(a, b)| a == b)
            .count();
        if n > best.0 {
            best = (n, Some(image));
        }
    }
    best
}

/// What an engine that names images by their config has: the image itself
/// (the same config digest means the same layers), or a run of its bottom
/// layers. `needs_sizes`: its load names held layers by their tar lengths.
async fn holding_by_config(
    engine: &Engine,
    config: &str,
    diff_ids: &[String],
    needs_sizes: bool,
) -> Result<Holding> {
    if let Ok(i) = engine.daemon.api.inspect_image(config).await {
        let layers = i.root_fs.and_then(|r| r.layers).unwrap_or_default();
        return Ok(Holding {
            image: Some(Loaded {
                id: config.to_string(),
                diff_ids: layers,
            }),
            layers: diff_ids.len(),
            ..Holding::default()
        });
    }
    let (layers, _) = longest_prefix(diff_ids, &engine.all_layers().await?);
    Ok(Holding {
        layers,
        needs_sizes: needs_sizes && layers > 0,
        ..Holding::default()
    })
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe(self.kind, &self.version))
    }
}

fn describe(kind: Kind, version: &str) -> String {
    match kind {
        Kind::Classic => format!("Docker {version} (classic image store)"),
        Kind::Containerd => format!("Docker {version} (containerd image store)"),
        Kind::Podman => format!("podman {version}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_run_of_bottom_layers_counts() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let wanted = l(&["a", "b", "c"]);
        let images = vec![
            ("x".to_string(), l(&["a", "z", "c"])),
            ("y".to_string(), l(&["a", "b"])),
            ("w".to_string(), l(&["b", "c"])),
        ];
        let (n, best) = longest_prefix(&wanted, &images);
        assert_eq!((n, best.map(|b| b.0.as_str())), (2, Some("y")));
        // A layer alone doesn't count: the layers below it must match too.
        assert_eq!(longest_prefix(&l(&["b", "c"]), &images[..2]).0, 0);
    }
}
