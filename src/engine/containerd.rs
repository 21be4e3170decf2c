//! Docker's containerd image store (the default since Docker 29). An image
//! is named by its manifest's digest; its layers are content blobs named by
//! their own digests (gzip from a registry, plain tars from `docker load`),
//! which its API does not show: [`super::probe`] reads the manifest through
//! a push. A load of an OCI layout whose blobs are missing still reports
//! success, leaving an image whose manifest is not "available": dos checks.

use std::collections::HashMap;

use std::io;

use anyhow::{anyhow, bail, Context, Result};
use bollard::query_parameters::ListImagesOptionsBuilder;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::oci::{self, Manifest};
use super::{longest_prefix, probe, Engine, Holding, Loaded};
use crate::registry::client::Client;
use crate::tarstream;

/// Full matches (same layers, maybe another config) probed at most, looking
/// for the image itself.
const MAX_CANDIDATES: usize = 8;

/// The manifest the store holds for image `id` with these layers, parsed
/// and as its bytes (a push sends the stored bytes as they are).
pub(super) async fn manifest_of(
    engine: &Engine,
    id: &str,
    diff_ids: &[String],
) -> Result<(Manifest, Vec<u8>)> {
    let pushed = probe::manifests(&engine.daemon, id).await?;
    // An index is pushed after its platform manifests; the one whose
    // layers are this image's is the one wanted.
    let mut parsed: Vec<(String, Manifest, Vec<u8>)> = pushed
        .into_iter()
        .filter_map(|p| Manifest::parse(&p.body).map(|m| (p.digest, m, p.body)))
        .filter(|(_, m, _)| m.layers.len() == diff_ids.len())
        .collect();
    let at = parsed.iter().position(|(d, _, _)| d == id).unwrap_or(0);
    (at < parsed.len())
        .then(|| {
            let (_, m, body) = parsed.swap_remove(at);
            (m, body)
        })
        .with_context(|| {
            format!(
                "the daemon's push of {id} showed no manifest with its {} layers",
                diff_ids.len()
            )
        })
}

pub(super) async fn holding(
    engine: &Engine,
    config: &str,
    diff_ids: &[String],
    manifest: Option<&str>,
) -> Result<Holding> {
    // The source's own manifest: the image itself (a manifest names its
    // config, and the config its layers), found without a probe or a
    // listing (with their availability, Docker 28 lists 150 images in 1.5 s
    // here). The store reports an image's layers only where it holds the
    // content they need.
    if let Some(m) = manifest {
        let inspected = engine.daemon.api.inspect_image(m).await.ok();
        let layers = inspected.and_then(|i| i.root_fs).and_then(|r| r.layers);
        if layers.as_deref() == Some(diff_ids) {
            return Ok(Holding {
                image: Some(Loaded {
                    id: m.to_string(),
                    diff_ids: diff_ids.to_vec(),
                }),
                layers: diff_ids.len(),
                ..Holding::default()
            });
        }
    }
    // One listing: the images and whether each is whole.
    let available = available(engine).await?;
    let all = engine.layers_of(available.keys().cloned()).await;
    // The image itself, under any name: same layers and the same config.
    for (id, _) in all
        .iter()
        .filter(|(id, l)| l == diff_ids && available.get(id.as_str()) == Some(&true))
        .take(MAX_CANDIDATES)
    {
        match manifest_of(engine, id, diff_ids).await {
            Ok((m, _)) if m.config.digest == config => {
                return Ok(Holding {
                    image: Some(Loaded {
                        id: id.clone(),
                        diff_ids: diff_ids.to_vec(),
                    }),
                    layers: diff_ids.len(),
                    ..Holding::default()
                })
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("{e:#}"),
        }
    }
    // Else the longest run of bottom layers some whole image here has, by
    // the blobs that image's manifest names.
    let (layers, best) = longest_prefix(diff_ids, &all);
    let Some((id, its_layers)) = best.filter(|(id, _)| available.get(id.as_str()) == Some(&true))
    else {
        return Ok(Holding::default());
    };
    match manifest_of(engine, id, its_layers).await {
        Ok((m, _)) => Ok(Holding {
            layers,
            held: m.layers[..layers].to_vec(),
            ..Holding::default()
        }),
        Err(e) => {
            tracing::info!("dos: sending every layer: the blobs of {id} could not be read ({e:#})");
            Ok(Holding::default())
        }
    }
}

/// Image ID → whether every blob its manifests name is in the store.
async fn available(engine: &Engine) -> Result<HashMap<String, bool>> {
    let opts = ListImagesOptionsBuilder::default()
        .all(true)
        .manifests(true)
        .build();
    let images = engine
        .daemon
        .api
        .list_images(Some(opts))
        .await
        .context("listing the daemon's images")?;
    Ok(images
        .into_iter()
        .map(|i| {
            let ok = i
                .manifests
                .as_ref()
                .is_some_and(|ms| ms.iter().any(|m| m.available));
            (i.id, ok)
        })
        .collect())
}

/// The image `id` is whole: its manifest's every blob is in the store.
pub(super) async fn check_complete(engine: &Engine, id: &str) -> Result<()> {
    match available(engine).await?.get(id) {
        Some(true) => Ok(()),
        Some(false) => bail!(
            "the load left image {id} incomplete (blobs its manifest names are not in the store)"
        ),
        None => bail!("the load did not produce image {id}"),
    }
}

/// Docker 28's containerd store can end a pull without fetching the blobs
/// of layers it has unpacked already (moby#49784, fixed after 28.5): the
/// image runs, but it is incomplete (its export and push fail). Such an
/// image is completed by loading its manifest again with every blob it
/// names, read from `registry`; an image still incomplete then is a failure.
pub(super) async fn complete(engine: &Engine, registry: &Client, manifest: &str) -> Result<()> {
    match available(engine).await?.get(manifest) {
        Some(true) => return Ok(()),
        None => bail!("the pull did not produce image {manifest}"),
        Some(false) => {}
    }
    tracing::info!("dos: the pull left {manifest} without some of its blobs (a Docker bug, moby#49784); loading them from the relay");
    let body = registry.manifest(manifest).await?;
    let m = Manifest::parse(&body).context("the pulled manifest is not one image's")?;
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let feed = async move {
        let put = |b: Bytes| {
            let tx = tx.clone();
            async move {
                tx.send(Ok(b))
                    .await
                    .map_err(|_| anyhow!("docker load stopped reading"))
            }
        };
        for d in std::iter::once(&m.config).chain(&m.layers) {
            let name = format!("blobs/sha256/{}", d.digest.trim_start_matches("sha256:"));
            put(Bytes::copy_from_slice(&tarstream::file_header(
                &name, d.size,
            )?))
            .await?;
            let mut blob = Box::pin(registry.blob(&d.digest, d.size).await?);
            while let Some(chunk) = blob.next().await {
                match chunk {
                    Ok(b) => put(b).await?,
                    Err(e) => {
                        let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                        return Err(anyhow!(e));
                    }
                }
            }
            put(Bytes::from(tarstream::pad_for(d.size))).await?;
        }
        let index = oci::index(
            &body,
            if m.media_type.is_empty() {
                oci::MANIFEST_OCI
            } else {
                &m.media_type
            },
        );
        let name = format!("blobs/sha256/{}", manifest.trim_start_matches("sha256:"));
        for (name, file) in [
            (name.as_str(), body.clone()),
            ("index.json", index),
            ("oci-layout", oci::LAYOUT_FILE.to_vec()),
        ] {
            for chunk in tarstream::file_chunks(name, file)? {
                put(chunk).await?;
            }
        }
        put(Bytes::copy_from_slice(&tarstream::trailer())).await?;
        Ok::<_, anyhow::Error>(())
    };
    let body =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let (fed, loaded) = tokio::join!(feed, engine.daemon.load(body));
    fed.context("completing the pulled image from the relay")?;
    loaded.context("completing the pulled image from the relay")?;
    check_complete(engine, manifest).await
}
