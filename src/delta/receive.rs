//! Far side of the delta path: decompress the records, verify every layer
//! against its diffID and the config against the image ID as they stream,
//! and feed a `docker load` archive built on the fly.
//!
//! The archive holds only the layers sent, in the form the far engine loads
//! ([`Layout`]): a `docker save` archive (the classic store skips a layer
//! file whose chain it already has), or an OCI layout whose manifest names
//! the held layers by the descriptors the engine holds them under. The
//! manifest is written here, from the verified config, with no tags (the
//! caller tags after checking the image), so a peer can't name or
//! overwrite anything through it.
//!
//! Each layer's bytes also go to the resume spool as they arrive. A layer
//! the pusher resumes is replayed from the spool first, then completed from
//! the wire, and the whole of it is hashed: a spool holding anything but the
//! layer's true prefix fails the check and is deleted.

use std::collections::{HashMap, HashSet};
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

use super::adaptive::WINDOW_LOG;
use super::records::{self, Record};
use super::spool::{self, Entry, Spool};
use super::tarstream;
use crate::docker::Daemon;
use crate::engine::oci::{self, Descriptor, Manifest};
use crate::engine::Layout;

const CHUNK: usize = 128 * 1024;

pub struct ReceivePlan {
    pub image_id: String,
    pub diff_ids: Vec<String>,
    pub have: usize,
    /// Where arriving layers are kept for a rerun (None: off).
    pub spool: Option<Spool>,
    /// Spool files this transfer holds, by diffID: those offered to the
    /// pusher for resuming, and those written since.
    pub held: HashMap<String, Entry>,
    /// The form the far engine loads.
    pub layout: Layout,
    /// OCI layout: the descriptors the engine holds the first `have` layers
    /// under; empty where it finds them by diffID (then they are named as
    /// plain tars, with the lengths the pusher sends).
    pub blobs: Vec<Descriptor>,
}

impl ReceivePlan {
    /// The image is loaded: its spooled layers are no longer needed.
    pub fn clean_spool(&mut self) {
        for (_, e) in self.held.drain() {
            e.remove();
        }
    }
}

/// Receive the stream and load it. Returns the digest of the manifest
/// written (OCI layout only).
pub async fn receive<R: AsyncRead + Unpin>(
    daemon: &Daemon,
    input: R,
    plan: &mut ReceivePlan,
) -> Result<Option<String>> {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let load = tokio::spawn(load(daemon.clone(), rx));
    let fed = feed(input, plan, &tx).await;
    if let Err(e) = &fed {
        // Make the load fail rather than finish on a partial archive.
        let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
    }
    drop(tx);
    let loaded = load.await.map_err(|e| anyhow!("docker load task: {e}"))?;
    let manifest = fed?;
    loaded?;
    Ok(manifest)
}

async fn feed<R: AsyncRead + Unpin>(
    input: R,
    plan: &mut ReceivePlan,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> Result<Option<String>> {
    let params = [DParameter::window_log_max(WINDOW_LOG)];
    let mut dec = ZstdDecoder::with_params(BufReader::new(input), &params);
    let expected: HashSet<String> = plan.diff_ids[plan.have..].iter().cloned().collect();
    let mut got: HashSet<String> = HashSet::new();
    let mut config: Option<Vec<u8>> = None;
    // Tar lengths: of the layers received, and of held ones as the pusher
    // reports them.
    let mut lens: HashMap<String, u64> = HashMap::new();
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
                check_wanted(&expected, &got, &diff_id)?;
                layer(&mut dec, &send, plan, &expected, &diff_id, len, 0).await?;
                lens.insert(diff_id.clone(), len);
                got.insert(diff_id);
            }
            Record::Resume {
                diff_id,
                len,
                offset,
            } => {
                check_wanted(&expected, &got, &diff_id)?;
                layer(&mut dec, &send, plan, &expected, &diff_id, len, offset).await?;
                lens.insert(diff_id.clone(), len);
                got.insert(diff_id);
            }
            Record::Sizes { count } => {
                let held = &plan.diff_ids[..plan.have];
                for (d, len) in records::read_sizes(&mut dec, count).await? {
                    if held.contains(&d) {
                        lens.entry(d).or_insert(len);
                    }
                }
            }
            Record::End => break,
        }
    }
    let missing: Vec<&String> = expected.iter().filter(|d| !got.contains(*d)).collect();
    if !missing.is_empty() {
        bail!("the stream ended without layers {missing:?}");
    }
    let config = config.ok_or_else(|| anyhow!("the stream ended without the image config"))?;
    let (files, manifest) = match plan.layout {
        Layout::DockerArchive => (docker_archive(plan, config)?, None),
        Layout::Oci => {
            let (files, digest) = oci_layout(plan, config, &lens)?;
            (files, Some(digest))
        }
    };
    for (name, body) in files {
        send(Bytes::copy_from_slice(&tarstream::file_header(
            &name,
            body.len() as u64,
        )?))
        .await?;
        let pad = tarstream::pad_for(body.len() as u64);
        send(Bytes::from(body)).await?;
        send(Bytes::from(pad)).await?;
    }
    send(Bytes::copy_from_slice(&tarstream::trailer())).await?;
    Ok(manifest)
}

/// Files of an archive: name and contents.
type Files = Vec<(String, Vec<u8>)>;

/// Where a layer goes in the archive.
fn layer_entry(layout: Layout, diff_id: &str) -> String {
    let hex = diff_id.trim_start_matches("sha256:");
    match layout {
        Layout::DockerArchive => format!("{hex}/layer.tar"),
        Layout::Oci => format!("blobs/sha256/{hex}"),
    }
}

/// The files after the layers of a `docker save` archive.
fn docker_archive(plan: &ReceivePlan, config: Vec<u8>) -> Result<Files> {
    let hex = plan.image_id.trim_start_matches("sha256:");
    let config_name = format!("{hex}.json");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": null,
        "Layers": plan.diff_ids.iter()
            .map(|d| layer_entry(Layout::DockerArchive, d))
            .collect::<Vec<_>>(),
    }]))?;
    Ok(vec![
        (config_name, config),
        ("manifest.json".into(), manifest),
    ])
}

/// The files after the layers of an OCI layout, and its manifest's digest.
fn oci_layout(
    plan: &ReceivePlan,
    config: Vec<u8>,
    lens: &HashMap<String, u64>,
) -> Result<(Files, String)> {
    let mut layers = Vec::with_capacity(plan.diff_ids.len());
    for (i, d) in plan.diff_ids.iter().enumerate() {
        let held = plan.blobs.get(i).filter(|_| i < plan.have).cloned();
        let desc = match (held, lens.get(d)) {
            (Some(b), _) => b,
            (None, Some(&len)) => Descriptor::layer_tar(d, len),
            (None, None) => bail!("the pusher did not say how long held layer {d} is"),
        };
        layers.push(desc);
    }
    let manifest = Manifest::new(&config, layers);
    let body = manifest.to_bytes();
    let digest = oci::sha256(&body);
    let index = oci::index(&body, &manifest.media_type);
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    Ok((
        vec![
            (blob(&manifest.config.digest), config),
            (blob(&digest), body),
            ("index.json".into(), index),
            ("oci-layout".into(), oci::LAYOUT_FILE.to_vec()),
        ],
        digest,
    ))
}

fn check_wanted(expected: &HashSet<String>, got: &HashSet<String>, diff_id: &str) -> Result<()> {
    if !expected.contains(diff_id) || got.contains(diff_id) {
        bail!("the pusher sent layer {diff_id}, which was not asked for");
    }
    Ok(())
}

/// One layer into the archive: its first `offset` bytes from the spool (the
/// pusher resumes there), the rest from the stream, all of it hashed and
/// checked against the diffID before the archive goes on.
async fn layer<R, F, Fut>(
    dec: &mut R,
    send: &F,
    plan: &mut ReceivePlan,
    expected: &HashSet<String>,
    diff_id: &str,
    len: u64,
    offset: u64,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    F: Fn(Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut entry = if offset > 0 {
        let e = plan.held.remove(diff_id).filter(|e| e.held() >= offset);
        let Some(e) = e else {
            bail!("the pusher resumed layer {diff_id} at byte {offset}, which this side did not offer");
        };
        Some(e)
    } else {
        // Sent whole: any spooled prefix is overwritten.
        match plan.held.remove(diff_id) {
            Some(mut e) => {
                e.truncate(0);
                Some(e)
            }
            None => plan
                .spool
                .as_ref()
                .and_then(|s| s.create(diff_id, len, expected)),
        }
    };
    send(Bytes::copy_from_slice(&tarstream::file_header(
        &layer_entry(plan.layout, diff_id),
        len,
    )?))
    .await?;
    let mut hasher = Sha256::new();
    let mut pos = 0u64;
    if let Some(e) = entry.as_mut().filter(|_| offset > 0) {
        while pos < offset {
            let mut buf = vec![0u8; CHUNK.min((offset - pos) as usize)];
            let n = e
                .read_at(pos, &mut buf)
                .with_context(|| format!("reading layer {diff_id} from the resume spool"))?;
            if n == 0 {
                bail!("the resume spool's copy of layer {diff_id} ended early");
            }
            buf.truncate(n);
            hasher.update(&buf);
            pos += n as u64;
            send(Bytes::from(buf)).await?;
        }
        e.truncate(offset);
    }
    let started = std::time::Instant::now();
    let mut judged = offset > 0;
    while pos < len {
        if !judged && pos >= spool::PROBE {
            judged = true;
            let keep = plan
                .spool
                .as_ref()
                .is_none_or(|s| s.worth_keeping(pos, started.elapsed().as_secs_f64()));
            if let Some(e) = entry.take_if(|_| !keep) {
                tracing::debug!(layer = diff_id, "arriving fast: not spooled");
                e.remove();
            }
        }
        let mut buf = vec![0u8; CHUNK.min((len - pos) as usize)];
        dec.read_exact(&mut buf)
            .await
            .with_context(|| format!("receiving layer {diff_id}"))?;
        hasher.update(&buf);
        pos += buf.len() as u64;
        if let Some(e) = entry.as_mut() {
            e.append(&buf);
        }
        send(Bytes::from(buf)).await?;
    }
    let h = format!("sha256:{}", hex::encode(hasher.finalize()));
    if h != diff_id {
        if let Some(e) = entry {
            e.remove();
        }
        bail!("integrity: layer {diff_id} arrived with content hashing to {h}; nothing was loaded");
    }
    send(Bytes::from(tarstream::pad_for(len))).await?;
    // Not fsynced: the spool outlives a dead link, not a crashed machine, and
    // whatever a crash leaves is re-hashed before it is used.
    if let Some(e) = entry.filter(Entry::usable) {
        plan.held.insert(diff_id.to_string(), e);
    }
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
