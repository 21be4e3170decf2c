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

use anyhow::{anyhow, bail, Context, Result};
use async_compression::tokio::bufread::ZstdDecoder;
use async_compression::zstd::DParameter;
use tokio::io::{AsyncRead, BufReader};

use super::adaptive::WINDOW_LOG;
use super::records::{self, Record};
use crate::docker::Daemon;
use crate::engine::{oci, Layout};

mod archive;
mod layer;
mod plan;
mod segments;

use archive::{descriptor, docker_archive, named_blob, oci_layout};
use layer::{check_wanted, layer, Arriving};
pub use plan::{ReceivePlan, SourceManifest};
use segments::{partial_config, Loads};
pub use segments::{Partials, PARTIAL_LABEL};

/// What a receive loaded.
pub struct Received {
    /// The digest of the manifest written (OCI layout only).
    pub manifest: Option<String>,
    /// The images of the segments loaded first: for the caller to remove
    /// once it has checked the image.
    pub partials: Partials,
}

/// Receive the stream and load it ([`segments`]). On failure, whatever
/// the loads made is removed.
pub async fn receive<R: AsyncRead + Unpin>(
    daemon: &Daemon,
    input: R,
    plan: &mut ReceivePlan,
) -> Result<Received> {
    let mut loads = Loads::into(daemon);
    let fed = feed(input, plan, &mut loads).await;
    let done = match fed {
        Ok(manifest) => loads.applied().await.map(|()| manifest),
        Err(e) => {
            loads.abort(&e).await;
            Err(e)
        }
    };
    match done {
        Ok(manifest) => Ok(Received {
            manifest,
            partials: loads.partials,
        }),
        Err(e) => {
            loads.partials.remove().await;
            Err(e)
        }
    }
}

/// What has arrived so far.
#[derive(Default)]
struct Arrived {
    layers: HashSet<String>,
    /// Layers that arrived as the source's blobs: diffID → layer index.
    as_blobs: HashMap<String, usize>,
    config: Option<Vec<u8>>,
    /// Tar lengths: of the layers received, and of held ones as the pusher
    /// reports them.
    lens: HashMap<String, u64>,
}

async fn feed<R: AsyncRead + Unpin>(
    input: R,
    plan: &mut ReceivePlan,
    out: &mut Loads,
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
    let mut got = Arrived::default();
    loop {
        let (diff_id, len) = match records::read_header(&mut dec)
            .await
            .context("reading the delta stream")?
        {
            Record::Config { len } => {
                got.config = Some(records::read_config(&mut dec, len, &plan.image_id).await?);
                continue;
            }
            Record::Layer { diff_id, len } => {
                check_wanted(&expected, &got.layers, &diff_id)?;
                let a = Arriving::tar(&diff_id, len, 0);
                layer(&mut dec, out, plan, &keep, a).await?;
                got.lens.insert(diff_id.clone(), len);
                (diff_id, len)
            }
            Record::Resume {
                diff_id,
                len,
                offset,
            } => {
                check_wanted(&expected, &got.layers, &diff_id)?;
                let a = Arriving::tar(&diff_id, len, offset);
                layer(&mut dec, out, plan, &keep, a).await?;
                got.lens.insert(diff_id.clone(), len);
                (diff_id, len)
            }
            Record::Blob {
                diff_id,
                blob,
                len,
                offset,
            } => {
                check_wanted(&expected, &got.layers, &diff_id)?;
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
                layer(&mut dec, out, plan, &keep, a).await?;
                got.as_blobs.insert(diff_id.clone(), i);
                (diff_id, len)
            }
            Record::Sizes { count } => {
                let held = &plan.diff_ids[..plan.have];
                for (d, len) in records::read_sizes(&mut dec, count).await? {
                    if held.contains(&d) {
                        got.lens.entry(d).or_insert(len);
                    }
                }
                continue;
            }
            Record::End => break,
        };
        plan.tell_verified(&diff_id);
        got.layers.insert(diff_id);
        out.layer_sent(len);
        if out.full() {
            close_early(plan, &got, out).await?;
        }
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|d| !got.layers.contains(*d))
        .collect();
    if !missing.is_empty() {
        bail!("the stream ended without layers {missing:?}");
    }
    let config = got
        .config
        .take()
        .ok_or_else(|| anyhow!("the stream ended without the image config"))?;
    let n = plan.diff_ids.len();
    let (files, manifest) = match plan.layout {
        Layout::DockerArchive => (
            docker_archive(&plan.image_id, &plan.diff_ids, config)?,
            None,
        ),
        Layout::Oci => {
            let (files, digest) = oci_layout(plan, (n, true), config, &got.lens, &got.as_blobs)?;
            (files, Some(digest))
        }
    };
    out.close(files, None).await?;
    Ok(manifest)
}

/// Close the open segment as an image of the layers from the bottom up to
/// the last one received, if it can be: the layers received are such a
/// run, more are to come, the config is here (for the platform), and the
/// engine's descriptor of every layer in it is known.
async fn close_early(plan: &ReceivePlan, got: &Arrived, out: &mut Loads) -> Result<()> {
    let n = plan.diff_ids.len();
    let upto = plan.have
        + plan.diff_ids[plan.have..]
            .iter()
            .take_while(|d| got.layers.contains(*d))
            .count();
    let Some(config) = &got.config else {
        return Ok(());
    };
    // Every layer received is in the run (a layer may repeat in it).
    let run: HashSet<&String> = plan.diff_ids[plan.have..upto].iter().collect();
    if upto >= n || got.layers.len() != run.len() {
        return Ok(());
    }
    if plan.layout == Layout::Oci
        && (0..upto).any(|i| descriptor(plan, i, &got.lens, &got.as_blobs).is_none())
    {
        return Ok(());
    }
    let partial = partial_config(config, &plan.image_id, &plan.diff_ids[..upto])?;
    let config_id = oci::sha256(&partial);
    let (files, id) = match plan.layout {
        Layout::DockerArchive => (
            docker_archive(&config_id, &plan.diff_ids[..upto], partial)?,
            config_id,
        ),
        Layout::Oci => {
            let (files, digest) =
                oci_layout(plan, (upto, false), partial, &got.lens, &got.as_blobs)?;
            (
                files,
                if plan.keep_manifest {
                    digest
                } else {
                    config_id
                },
            )
        }
    };
    tracing::debug!("the engine applies layers 1 to {upto} of {n} while the rest arrive ({id})");
    out.close(files, Some(id)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::oci::{self, Descriptor, Manifest};
    use crate::tarstream::TarReader;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

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

    /// Loads that collect each segment's archive, closing segments past
    /// `segment` bytes.
    fn collecting(segment: u64) -> (Loads, Arc<Mutex<Vec<Vec<u8>>>>) {
        let archives = Arc::new(Mutex::new(Vec::new()));
        let a = archives.clone();
        let start: segments::Start = Box::new(move |mut rx| {
            let a = a.clone();
            tokio::spawn(async move {
                let mut archive = Vec::new();
                while let Some(chunk) = rx.recv().await {
                    archive.extend_from_slice(&chunk?);
                }
                a.lock().unwrap().push(archive);
                Ok(())
            })
        });
        (Loads::new(start, Partials::default(), segment), archives)
    }

    /// The file names and contents of an archive.
    async fn files(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut r = TarReader::new(archive);
        while let Some(e) = r.next().await.unwrap() {
            let body = r.read_all(1 << 20).await.unwrap();
            out.push((e.path.clone(), body));
        }
        out
    }

    /// Feed the stream; the archive's file names, or the error.
    async fn feed_all(
        plan: &mut ReceivePlan,
        wire: &[u8],
    ) -> Result<(Option<String>, Vec<String>)> {
        let (mut loads, archives) = collecting(segments::SEGMENT);
        let manifest = feed(wire, plan, &mut loads).await?;
        loads.applied().await?;
        let archives = archives.lock().unwrap().clone();
        assert_eq!(archives.len(), 1, "one segment");
        let names = files(&archives[0]).await.into_iter().map(|f| f.0).collect();
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

    /// Three layers, each past the segment size: the first two load as
    /// images of dos's (the bottom one, then the bottom two), each a
    /// partial archive that names what is below it, and the last segment
    /// carries the image's own config over all three.
    #[tokio::test]
    async fn layers_past_the_segment_size_load_in_segments() {
        let layers: Vec<Vec<u8>> = (1..=3u8).map(|k| vec![k; 5000]).collect();
        let diff_ids: Vec<String> = layers.iter().map(|l| oci::sha256(l)).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let image_id = oci::sha256(&config);
        let mut raw = Vec::new();
        records::write_config(&mut raw, &config).await.unwrap();
        for (l, d) in layers.iter().zip(&diff_ids) {
            records::write_layer_header(&mut raw, d, l.len() as u64)
                .await
                .unwrap();
            raw.extend_from_slice(l);
        }
        records::write_end(&mut raw).await.unwrap();
        let wire = zstd::stream::encode_all(&raw[..], 3).unwrap();
        let mut plan = ReceivePlan {
            verified: None,
            image_id: image_id.clone(),
            diff_ids: diff_ids.clone(),
            have: 0,
            spool: None,
            held: HashMap::new(),
            layout: Layout::DockerArchive,
            blobs: Vec::new(),
            source: None,
            keep_manifest: false,
        };
        let (mut loads, archives) = collecting(4000);
        feed(&wire[..], &mut plan, &mut loads).await.unwrap();
        loads.applied().await.unwrap();
        assert_eq!(loads.partials.count(), 2);
        let archives = archives.lock().unwrap().clone();
        assert_eq!(archives.len(), 3);
        for (k, archive) in archives.iter().enumerate() {
            let files = files(archive).await;
            let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
            // Each archive holds its own layer only.
            let layer = format!("{}/layer.tar", &diff_ids[k][7..]);
            assert_eq!(names.iter().filter(|n| n.ends_with("layer.tar")).count(), 1);
            assert!(names.contains(&layer.as_str()), "{names:?}");
            let manifest = &files.iter().find(|f| f.0 == "manifest.json").unwrap().1;
            let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
            assert_eq!(m[0]["Layers"].as_array().unwrap().len(), k + 1);
            let config_name = m[0]["Config"].as_str().unwrap();
            let body = &files.iter().find(|f| f.0 == config_name).unwrap().1;
            let id = format!("sha256:{}", config_name.trim_end_matches(".json"));
            assert_eq!(id, oci::sha256(body));
            let c: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(c["rootfs"]["diff_ids"], serde_json::json!(diff_ids[..=k]));
            if k < 2 {
                assert_eq!(c["config"]["Labels"][PARTIAL_LABEL], image_id.as_str());
            } else {
                assert_eq!(id, image_id);
            }
        }

        // Out of order, no run from the bottom is complete until the end:
        // one segment.
        let mut raw = Vec::new();
        records::write_config(&mut raw, &config).await.unwrap();
        for k in [1, 0, 2] {
            records::write_layer_header(&mut raw, &diff_ids[k], 5000)
                .await
                .unwrap();
            raw.extend_from_slice(&layers[k]);
        }
        records::write_end(&mut raw).await.unwrap();
        let wire = zstd::stream::encode_all(&raw[..], 3).unwrap();
        let (mut loads, archives) = collecting(4000);
        feed(&wire[..], &mut plan, &mut loads).await.unwrap();
        loads.applied().await.unwrap();
        // Layer 1 then 0: the run 0..2 is whole after the second.
        assert_eq!(loads.partials.count(), 1);
        assert_eq!(archives.lock().unwrap().len(), 2);
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
