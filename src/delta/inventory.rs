//! Far side: what its daemon already has, as layer chains.

use std::collections::HashSet;

use anyhow::{Context, Result};
use bollard::query_parameters::ListImagesOptionsBuilder;
use futures_util::{stream, StreamExt};

use super::chain::chain_ids;
use crate::docker::Daemon;

/// How the daemon stores images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Graph drivers (overlay2, …): layers keyed by chainID; `docker load`
    /// accepts archives without the layers whose chain it has.
    Classic,
    /// The containerd image store (snapshotter): content keyed by blob digest.
    Containerd,
}

pub async fn store_kind(daemon: &Daemon) -> Result<Store> {
    let info = daemon
        .api
        .info()
        .await
        .context("asking the daemon for its info")?;
    let containerd = info
        .driver_status
        .unwrap_or_default()
        .iter()
        .any(|kv| kv.iter().any(|v| v.contains("io.containerd.snapshotter")));
    Ok(if containerd {
        Store::Containerd
    } else {
        Store::Classic
    })
}

/// Every chainID of every image (intermediate ones included) on the daemon.
pub async fn chains(daemon: &Daemon) -> Result<HashSet<String>> {
    let opts = ListImagesOptionsBuilder::default().all(true).build();
    let images = daemon
        .api
        .list_images(Some(opts))
        .await
        .context("listing the daemon's images")?;
    let layer_lists: Vec<Vec<String>> = stream::iter(images.into_iter().map(|i| i.id))
        .map(|id| async move {
            daemon
                .api
                .inspect_image(&id)
                .await
                .ok()
                .and_then(|i| i.root_fs)
                .and_then(|r| r.layers)
                .unwrap_or_default()
        })
        .buffer_unordered(8)
        .collect()
        .await;
    Ok(layer_lists.iter().flat_map(|l| chain_ids(l)).collect())
}
