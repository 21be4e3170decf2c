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
use tokio::io::{AsyncRead, BufReader};
use tokio::sync::mpsc;

use super::adaptive::WINDOW_LOG;
use super::records::{self, Record};
use crate::docker::Daemon;
use crate::engine::Layout;
use crate::tarstream;

mod archive;
mod layer;
mod plan;

use archive::{docker_archive, named_blob, oci_layout};
use layer::{check_wanted, layer, Arriving};
pub use plan::{ReceivePlan, SourceManifest};

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
    // Layers compressed once for a fan-out come as frames of their own.
    dec.multiple_members(true);
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
                plan.tell_verified(&diff_id);
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
                plan.tell_verified(&diff_id);
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
                plan.tell_verified(&diff_id);
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

/// `docker load` from a stream of archive chunks.
async fn load(daemon: Daemon, rx: mpsc::Receiver<io::Result<Bytes>>) -> Result<()> {
    let body =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    daemon.load(body).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::oci::{self, Descriptor, Manifest};
    use crate::tarstream::TarReader;
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
            verified: None,
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
