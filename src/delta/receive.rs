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
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

use super::adaptive::WINDOW_LOG;
use super::records::{self, Record};
use super::spool::{self, Entry, Spool};
use super::tarstream;
use super::unpack::{Hashing, Unpack};
use crate::docker::Daemon;
use crate::engine::oci::{self, Descriptor, Manifest};
use crate::engine::{Compression, Layout};

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
    /// The source's manifest, where the pusher sent it: layers may arrive
    /// as the compressed blobs it names.
    pub source: Option<SourceManifest>,
    /// The engine names images by their manifest: where every layer ends
    /// up under the descriptor the source's manifest gives it, that
    /// manifest is loaded as it is (the same image ID as the source).
    pub keep_manifest: bool,
}

/// The source's manifest as the pusher sent it, checked against its plan.
pub struct SourceManifest {
    body: Vec<u8>,
    parsed: Manifest,
}

impl SourceManifest {
    /// The pusher's manifest, if it is one of the image with `config` and
    /// these layers.
    pub fn check(body: String, config: &str, diff_ids: &[String]) -> Option<SourceManifest> {
        let body = body.into_bytes();
        let parsed = Manifest::parse(&body)?;
        let fits = parsed.config.digest == config
            && parsed.layers.len() == diff_ids.len()
            && parsed
                .layers
                .iter()
                .zip(diff_ids)
                .all(|(l, d)| Compression::of(&l.media_type).is_some() || l.digest == *d);
        fits.then_some(SourceManifest { body, parsed })
    }

    pub fn digest(&self) -> String {
        oci::sha256(&self.body)
    }

    /// The compressed blob the source holds layer `i` as, if it is one.
    pub fn blob(&self, i: usize) -> Option<&Descriptor> {
        self.parsed
            .layers
            .get(i)
            .filter(|l| Compression::of(&l.media_type).is_some())
    }
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
    // What the spool keeps while making room: this image's layers, under
    // either name.
    let mut keep = expected.clone();
    if let Some(src) = &plan.source {
        keep.extend(
            (plan.have..plan.diff_ids.len()).filter_map(|i| src.blob(i).map(|b| b.digest.clone())),
        );
    }
    let mut got: HashSet<String> = HashSet::new();
    // Layers that arrived as the source's blobs: diffID → layer index.
    let mut as_blobs: HashMap<String, usize> = HashMap::new();
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
                config = Some(records::read_config(&mut dec, len, &plan.image_id).await?);
            }
            Record::Layer { diff_id, len } => {
                check_wanted(&expected, &got, &diff_id)?;
                let a = Arriving::tar(&diff_id, len, 0);
                layer(&mut dec, &send, plan, &keep, a).await?;
                lens.insert(diff_id.clone(), len);
                got.insert(diff_id);
            }
            Record::Resume {
                diff_id,
                len,
                offset,
            } => {
                check_wanted(&expected, &got, &diff_id)?;
                let a = Arriving::tar(&diff_id, len, offset);
                layer(&mut dec, &send, plan, &keep, a).await?;
                lens.insert(diff_id.clone(), len);
                got.insert(diff_id);
            }
            Record::Blob {
                diff_id,
                blob,
                len,
                offset,
            } => {
                check_wanted(&expected, &got, &diff_id)?;
                let (i, compression) = named_blob(plan, &diff_id, &blob, len).ok_or_else(|| {
                    anyhow!("the pusher sent layer {diff_id} as a blob {blob} of {len} bytes, which its manifest does not name")
                })?;
                let a = Arriving {
                    name: &blob,
                    diff_id: &diff_id,
                    len,
                    offset,
                    unpack: Some(compression),
                };
                layer(&mut dec, &send, plan, &keep, a).await?;
                as_blobs.insert(diff_id.clone(), i);
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
            let (files, digest) = oci_layout(plan, config, &lens, &as_blobs)?;
            (files, Some(digest))
        }
    };
    for (name, body) in files {
        for chunk in tarstream::file_chunks(&name, body)? {
            send(chunk).await?;
        }
    }
    send(Bytes::copy_from_slice(&tarstream::trailer())).await?;
    Ok(manifest)
}

/// Files of an archive: name and contents.
type Files = Vec<(String, Vec<u8>)>;

/// Where a layer goes in the archive. The classic store's load unpacks a
/// compressed layer file itself, so a blob goes where its tar would.
fn layer_entry(layout: Layout, a: &Arriving) -> String {
    match layout {
        Layout::DockerArchive => format!("{}/layer.tar", a.diff_id.trim_start_matches("sha256:")),
        Layout::Oci => format!("blobs/sha256/{}", a.name.trim_start_matches("sha256:")),
    }
}

/// Layer `diff_id` may arrive as blob `blob` of `len` bytes: the source's
/// manifest names it so for a layer still missing. Returns that layer's
/// index and the blob's compression.
fn named_blob(
    plan: &ReceivePlan,
    diff_id: &str,
    blob: &str,
    len: u64,
) -> Option<(usize, Compression)> {
    let src = plan.source.as_ref()?;
    (plan.have..plan.diff_ids.len()).find_map(|i| {
        let b = src.blob(i)?;
        (plan.diff_ids[i] == diff_id && b.digest == blob && b.size == len)
            .then(|| Compression::of(&b.media_type))
            .flatten()
            .map(|c| (i, c))
    })
}

/// The files after the layers of a `docker save` archive.
fn docker_archive(plan: &ReceivePlan, config: Vec<u8>) -> Result<Files> {
    let hex = plan.image_id.trim_start_matches("sha256:");
    let config_name = format!("{hex}.json");
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": null,
        "Layers": plan.diff_ids.iter()
            .map(|d| format!("{}/layer.tar", d.trim_start_matches("sha256:")))
            .collect::<Vec<_>>(),
    }]))?;
    Ok(vec![
        (config_name, config),
        ("manifest.json".into(), manifest),
    ])
}

/// The files after the layers of an OCI layout, and its manifest's digest.
/// The manifest is the source's own where the engine names images by
/// their manifest and every layer is under the descriptor the source's
/// manifest gives it; else dos writes one (the form a full `docker load`
/// gives, see [`oci`]).
fn oci_layout(
    plan: &ReceivePlan,
    config: Vec<u8>,
    lens: &HashMap<String, u64>,
    as_blobs: &HashMap<String, usize>,
) -> Result<(Files, String)> {
    let src = plan.source.as_ref();
    let mut layers = Vec::with_capacity(plan.diff_ids.len());
    for (i, d) in plan.diff_ids.iter().enumerate() {
        let held = plan.blobs.get(i).filter(|_| i < plan.have).cloned();
        let blob = as_blobs.get(d).and_then(|&j| src?.blob(j)).cloned();
        let desc = match (held, blob, lens.get(d)) {
            (Some(b), _, _) => b,
            (None, Some(b), _) => b,
            (None, None, Some(&len)) => Descriptor::layer_tar(d, len),
            (None, None, None) => bail!("the pusher did not say how long held layer {d} is"),
        };
        layers.push(desc);
    }
    let theirs = src.filter(|s| {
        plan.keep_manifest
            && s.parsed.config.size == config.len() as u64
            && s.parsed
                .layers
                .iter()
                .zip(&layers)
                .all(|(a, b)| a.digest == b.digest)
    });
    let (body, media_type) = match theirs {
        Some(s) => (s.body.clone(), s.parsed.media_type.clone()),
        None => {
            let m = Manifest::new(
                &config,
                layers
                    .into_iter()
                    .map(Descriptor::in_docker_manifest)
                    .collect(),
            );
            (m.to_bytes(), m.media_type)
        }
    };
    let media_type = if media_type.is_empty() {
        oci::MANIFEST_OCI.to_string()
    } else {
        media_type
    };
    let digest = oci::sha256(&body);
    let index = oci::index(&body, &media_type);
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    Ok((
        vec![
            (blob(&oci::sha256(&config)), config),
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

/// A layer arriving: as its tar, or as a compressed blob.
struct Arriving<'a> {
    /// What it is called (in the spool, in an OCI layout): its diffID, or
    /// the blob's digest.
    name: &'a str,
    diff_id: &'a str,
    /// Bytes in all, and where the wire's start (the rest is spooled).
    len: u64,
    offset: u64,
    /// A blob's compression (it is unpacked as it comes, to check the
    /// diffID); None for a tar.
    unpack: Option<Compression>,
}

impl<'a> Arriving<'a> {
    fn tar(diff_id: &'a str, len: u64, offset: u64) -> Arriving<'a> {
        Arriving {
            name: diff_id,
            diff_id,
            len,
            offset,
            unpack: None,
        }
    }
}

/// The checks on a layer's bytes as they pass: the tar hashes to the
/// diffID; a blob also hashes to its own digest.
struct Check {
    bytes: Sha256,
    tar: Option<Unpack<Hashing<io::Sink>>>,
}

impl Check {
    fn new(a: &Arriving) -> Result<Check> {
        let tar = a
            .unpack
            .map(|c| Unpack::for_peer(c, Hashing::new(io::sink())))
            .transpose()
            .context("starting a decoder")?;
        Ok(Check {
            bytes: Sha256::new(),
            tar,
        })
    }

    fn update(&mut self, b: &[u8]) -> Result<(), String> {
        self.bytes.update(b);
        match self.tar.as_mut() {
            Some(t) => t.write(b).map_err(|e| format!("does not unpack ({e})")),
            None => Ok(()),
        }
    }

    fn finish(self, a: &Arriving) -> Result<(), String> {
        let h = format!("sha256:{}", hex::encode(self.bytes.finalize()));
        if h != a.name {
            return Err(format!("arrived with content hashing to {h}"));
        }
        if let Some(t) = self.tar {
            let tar = t.finish().map_err(|e| format!("does not unpack ({e})"))?;
            if tar.digest() != a.diff_id {
                return Err(format!("unpacks to content hashing to {}", tar.digest()));
            }
        }
        Ok(())
    }
}

/// One layer into the archive: its first `offset` bytes from the spool (the
/// pusher resumes there), the rest from the stream, all of it checked
/// ([`Check`]) before the archive goes on.
async fn layer<R, F, Fut>(
    dec: &mut R,
    send: &F,
    plan: &mut ReceivePlan,
    keep: &HashSet<String>,
    a: Arriving<'_>,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    F: Fn(Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let (name, len, offset) = (a.name, a.len, a.offset);
    let mut entry = if offset > 0 {
        let e = plan.held.remove(name).filter(|e| e.held() >= offset);
        let Some(e) = e else {
            bail!(
                "the pusher resumed layer {} at byte {offset}, which this side did not offer",
                a.diff_id
            );
        };
        Some(e)
    } else {
        // Sent whole: any spooled prefix is overwritten.
        match plan.held.remove(name) {
            Some(mut e) => {
                e.truncate(0);
                Some(e)
            }
            None => plan.spool.as_ref().and_then(|s| s.create(name, len, keep)),
        }
    };
    send(Bytes::copy_from_slice(&tarstream::file_header(
        &layer_entry(plan.layout, &a),
        len,
    )?))
    .await?;
    let mut check = Check::new(&a)?;
    let mut failed = None;
    let mut pos = 0u64;
    if let Some(e) = entry.as_mut().filter(|_| offset > 0) {
        while pos < offset {
            let mut buf = vec![0u8; CHUNK.min((offset - pos) as usize)];
            let n = e
                .read_at(pos, &mut buf)
                .with_context(|| format!("reading layer {} from the resume spool", a.diff_id))?;
            if n == 0 {
                bail!("the resume spool's copy of layer {} ended early", a.diff_id);
            }
            buf.truncate(n);
            failed = failed.or(check.update(&buf).err());
            pos += n as u64;
            send(Bytes::from(buf)).await?;
        }
        e.truncate(offset);
    }
    let started = std::time::Instant::now();
    let mut judged = offset > 0;
    while pos < len && failed.is_none() {
        if !judged && pos >= spool::PROBE {
            judged = true;
            let keep = plan
                .spool
                .as_ref()
                .is_none_or(|s| s.worth_keeping(pos, started.elapsed().as_secs_f64()));
            if let Some(e) = entry.take_if(|_| !keep) {
                tracing::debug!(layer = a.diff_id, "arriving fast: not spooled");
                e.remove();
            }
        }
        let mut buf = vec![0u8; CHUNK.min((len - pos) as usize)];
        dec.read_exact(&mut buf)
            .await
            .with_context(|| format!("receiving layer {}", a.diff_id))?;
        failed = check.update(&buf).err();
        pos += buf.len() as u64;
        if let Some(e) = entry.as_mut() {
            e.append(&buf);
        }
        send(Bytes::from(buf)).await?;
    }
    if let Err(why) = failed.map_or_else(|| check.finish(&a), Err) {
        if let Some(e) = entry {
            e.remove();
        }
        let what = match a.unpack {
            Some(_) => format!("layer {} (blob {name})", a.diff_id),
            None => format!("layer {}", a.diff_id),
        };
        bail!("integrity: {what} {why}; nothing was loaded");
    }
    send(Bytes::from(tarstream::pad_for(len))).await?;
    // Not fsynced: the spool outlives a dead link, not a crashed machine, and
    // whatever a crash leaves is re-hashed before it is used.
    if let Some(e) = entry.filter(Entry::usable) {
        plan.held.insert(name.to_string(), e);
    }
    Ok(())
}

/// `docker load` from a stream of archive chunks.
async fn load(daemon: Daemon, rx: mpsc::Receiver<io::Result<Bytes>>) -> Result<()> {
    let body =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    daemon.load(body).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::tarstream::TarReader;
    use std::io::Write;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b).unwrap();
        gz.finish().unwrap()
    }

    /// A one-layer image (5000 nines) whose source manifest names the layer
    /// as the gzip blob `named`: the plan, the stream carrying `blob` as that
    /// layer, and the source manifest's digest.
    async fn blob_stream(
        blob: &[u8],
        named: &[u8],
        keep_manifest: bool,
    ) -> (ReceivePlan, Vec<u8>, String) {
        let tar = vec![9u8; 5000];
        let diff_id = oci::sha256(&tar);
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}]}}"#,
            oci::MANIFEST_OCI,
            oci::sha256(config.as_bytes()),
            config.len(),
            oci::sha256(named),
            named.len()
        );
        let image_id = oci::sha256(config.as_bytes());
        let diff_ids = vec![diff_id.clone()];
        let source = SourceManifest::check(manifest.clone(), &image_id, &diff_ids).unwrap();
        let plan = ReceivePlan {
            image_id,
            diff_ids,
            have: 0,
            spool: None,
            held: HashMap::new(),
            layout: Layout::Oci,
            blobs: Vec::new(),
            source: Some(source),
            keep_manifest,
        };
        let mut raw = Vec::new();
        records::write_config(&mut raw, config.as_bytes())
            .await
            .unwrap();
        // The header names the blob the manifest names; the bytes are `blob`.
        records::write_blob_header(
            &mut raw,
            &diff_id,
            &oci::sha256(named),
            named.len() as u64,
            0,
        )
        .await
        .unwrap();
        raw.extend_from_slice(&blob[..named.len().min(blob.len())]);
        raw.resize(raw.len() + named.len().saturating_sub(blob.len()), 0);
        records::write_end(&mut raw).await.unwrap();
        let wire = zstd::stream::encode_all(&raw[..], 3).unwrap();
        (plan, wire, oci::sha256(manifest.as_bytes()))
    }

    /// Feed the stream; the archive's file names, or the error.
    async fn feed_all(
        plan: &mut ReceivePlan,
        wire: &[u8],
    ) -> Result<(Option<String>, Vec<String>)> {
        let (tx, mut rx) = mpsc::channel(1024);
        let fed = feed(wire, plan, &tx).await;
        drop(tx);
        let mut archive = Vec::new();
        while let Some(Ok(b)) = rx.recv().await {
            archive.extend_from_slice(&b);
        }
        let manifest = fed?;
        let mut names = Vec::new();
        let mut r = TarReader::new(&archive[..]);
        while let Some(e) = r.next().await.unwrap() {
            names.push(e.path.clone());
        }
        Ok((manifest, names))
    }

    #[tokio::test]
    async fn a_blob_the_manifest_names_is_kept_with_that_manifest() {
        let good = gzip(&[9u8; 5000]);
        let (mut plan, wire, source_digest) = blob_stream(&good, &good, true).await;
        let (manifest, names) = feed_all(&mut plan, &wire).await.unwrap();
        assert_eq!(manifest.as_deref(), Some(source_digest.as_str()));
        let blob = oci::sha256(&good);
        assert!(
            names.contains(&format!("blobs/sha256/{}", &blob[7..])),
            "{names:?}"
        );

        // An engine naming images by config gets dos's own manifest.
        let (mut plan, wire, source_digest) = blob_stream(&good, &good, false).await;
        let (manifest, _) = feed_all(&mut plan, &wire).await.unwrap();
        assert_ne!(manifest.as_deref(), Some(source_digest.as_str()));
    }

    #[tokio::test]
    async fn a_blob_that_is_not_its_layer_is_refused() {
        // Bytes other than the blob named.
        let good = gzip(&[9u8; 5000]);
        let other = gzip(&[8u8; 5000]);
        let (mut plan, wire, _) = blob_stream(&other, &good, true).await;
        let e = format!("{:#}", feed_all(&mut plan, &wire).await.unwrap_err());
        assert!(
            e.contains("integrity") && e.contains("arrived with content hashing"),
            "{e}"
        );
        // The blob named, but it is another layer's.
        let (mut plan, wire, _) = blob_stream(&other, &other, true).await;
        let e = format!("{:#}", feed_all(&mut plan, &wire).await.unwrap_err());
        assert!(
            e.contains("integrity") && e.contains("unpacks to content hashing"),
            "{e}"
        );
        // Not gzip at all.
        let junk = vec![1u8; 300];
        let (mut plan, wire, _) = blob_stream(&junk, &junk, true).await;
        let e = format!("{:#}", feed_all(&mut plan, &wire).await.unwrap_err());
        assert!(
            e.contains("integrity") && e.contains("does not unpack"),
            "{e}"
        );
    }

    #[test]
    fn a_manifest_of_another_image_is_not_taken() {
        let d = oci::sha256(b"layer");
        let m = Manifest::new(b"config", vec![Descriptor::layer_tar(&d, 5)]);
        let body = String::from_utf8(m.to_bytes()).unwrap();
        let config = oci::sha256(b"config");
        assert!(SourceManifest::check(body.clone(), &config, std::slice::from_ref(&d)).is_some());
        assert!(SourceManifest::check(
            body.clone(),
            &oci::sha256(b"other"),
            std::slice::from_ref(&d)
        )
        .is_none());
        // A plain-tar layer must be named by its diffID.
        assert!(SourceManifest::check(body, &config, &[oci::sha256(b"x")]).is_none());
    }
}
