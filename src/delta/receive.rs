//! Far side of the delta path: decompress the records, verify every layer
//! against its diffID and the config against the image ID as they stream,
//! and feed a `docker load` archive built on the fly.
//!
//! The archive holds only the layers sent: the classic store skips a layer
//! file whose chain it already has. The manifest is written here, from the
//! verified config, with no tags (the caller tags after checking the image
//! ID), so a peer can't name or overwrite anything through it.

use std::collections::HashSet;
use std::io;

use anyhow::{anyhow, bail, Context, Result};
use async_compression::tokio::bufread::ZstdDecoder;
use async_compression::zstd::DParameter;
use bollard::query_parameters::ImportImageOptionsBuilder;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

use super::records::{self, Record};
use super::send::ZSTD_WINDOW_LOG;
use super::tarstream;
use crate::docker::Daemon;

const CHUNK: usize = 128 * 1024;

pub struct ReceivePlan {
    pub image_id: String,
    pub diff_ids: Vec<String>,
    pub have: usize,
}

/// Receive the stream and load it. Returns the loaded image ID.
pub async fn receive<R: AsyncRead + Unpin>(
    daemon: &Daemon,
    input: R,
    plan: &ReceivePlan,
) -> Result<String> {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let load = tokio::spawn(load(daemon.clone(), rx));
    let fed = feed(input, plan, &tx).await;
    if let Err(e) = &fed {
        // Make the load fail rather than finish on a partial archive.
        let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
    }
    drop(tx);
    let loaded = load.await.map_err(|e| anyhow!("docker load task: {e}"))?;
    fed?;
    loaded?;
    Ok(plan.image_id.clone())
}

async fn feed<R: AsyncRead + Unpin>(
    input: R,
    plan: &ReceivePlan,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> Result<()> {
    let params = [DParameter::window_log_max(ZSTD_WINDOW_LOG)];
    let mut dec = ZstdDecoder::with_params(BufReader::new(input), &params);
    let expected: HashSet<&str> = plan.diff_ids[plan.have..]
        .iter()
        .map(String::as_str)
        .collect();
    let mut got: HashSet<String> = HashSet::new();
    let mut config: Option<Vec<u8>> = None;
    let send = |b: Bytes| async move {
        tx.send(Ok(b))
            .await
            .map_err(|_| anyhow!("docker load stopped reading"))
    };
    loop {
        match records::read_header(&mut dec)
            .await
            .context("reading the delta stream")?
        {
            Record::Config { len } => {
                let mut c = vec![0u8; len as usize];
                dec.read_exact(&mut c)
                    .await
                    .context("reading the image config")?;
                let d = format!("sha256:{}", hex::encode(Sha256::digest(&c)));
                if d != plan.image_id {
                    bail!(
                        "integrity: the config received hashes to {d}, expected {}",
                        plan.image_id
                    );
                }
                config = Some(c);
            }
            Record::Layer { diff_id, len } => {
                if !expected.contains(diff_id.as_str()) || got.contains(&diff_id) {
                    bail!("the pusher sent layer {diff_id}, which was not asked for");
                }
                let hex = diff_id.trim_start_matches("sha256:");
                send(Bytes::copy_from_slice(&tarstream::file_header(
                    &format!("{hex}/layer.tar"),
                    len,
                )?))
                .await?;
                let mut hasher = Sha256::new();
                let mut left = len;
                while left > 0 {
                    let mut buf = vec![0u8; CHUNK.min(left as usize)];
                    dec.read_exact(&mut buf)
                        .await
                        .with_context(|| format!("receiving layer {diff_id}"))?;
                    hasher.update(&buf);
                    left -= buf.len() as u64;
                    send(Bytes::from(buf)).await?;
                }
                let h = format!("sha256:{}", hex::encode(hasher.finalize()));
                if h != diff_id {
                    bail!("integrity: layer {diff_id} arrived with content hashing to {h}; nothing was loaded");
                }
                send(Bytes::from(tarstream::pad_for(len))).await?;
                got.insert(diff_id);
            }
            Record::End => break,
        }
    }
    let missing: Vec<&&str> = expected.iter().filter(|d| !got.contains(**d)).collect();
    if !missing.is_empty() {
        bail!("the stream ended without layers {missing:?}");
    }
    let config = config.ok_or_else(|| anyhow!("the stream ended without the image config"))?;
    let hex = plan.image_id.trim_start_matches("sha256:");
    let config_name = format!("{hex}.json");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": null,
        "Layers": plan.diff_ids.iter()
            .map(|d| format!("{}/layer.tar", d.trim_start_matches("sha256:")))
            .collect::<Vec<_>>(),
    }]))?;
    for (name, body) in [(config_name.as_str(), config), ("manifest.json", manifest)] {
        send(Bytes::copy_from_slice(&tarstream::file_header(
            name,
            body.len() as u64,
        )?))
        .await?;
        let pad = tarstream::pad_for(body.len() as u64);
        send(Bytes::from(body)).await?;
        send(Bytes::from(pad)).await?;
    }
    send(Bytes::copy_from_slice(&tarstream::trailer())).await?;
    Ok(())
}

/// `docker load` from a stream of archive chunks.
async fn load(daemon: Daemon, rx: mpsc::Receiver<io::Result<Bytes>>) -> Result<()> {
    let body =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let opts = ImportImageOptionsBuilder::default().quiet(true).build();
    let mut s = daemon.api.import_image_stream(opts, body, None);
    while let Some(item) = s.next().await {
        let info = item
            .map_err(|e| match e {
                bollard::errors::Error::DockerStreamError { error } => anyhow!(error),
                other => anyhow!(other),
            })
            .context("docker load failed")?;
        if let Some(line) = info
            .stream
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            tracing::debug!("docker load: {line}");
        }
    }
    Ok(())
}
