//! The stream of records the far side reads: the config, then each missing
//! layer once, then the sizes record and the end; and reading the missing
//! layers out of an image export into it; a fan-out's shared frames
//! spliced in.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::delta::adaptive::AdaptiveZstd;
use crate::delta::chain::{chain_ids, identify_v1_dir};
use crate::delta::records;
use crate::delta::shared::Frame;
use crate::tarstream::TarReader;

use super::layer::{
    copy_entry, is_hex64, resume_offset, send_file, spool_layer, stream_layer, unpack_layer,
};
use super::plan::{SendPlan, SendStats};

/// The compressed stream and what has gone into it.
pub(super) struct Out<W: AsyncWrite + Unpin> {
    pub(super) enc: AdaptiveZstd<W>,
    pub(super) sent: HashSet<String>,
    pub(super) config_sent: bool,
    pub(super) stats: SendStats,
    /// Tar lengths of the layers seen, by diffID (for a sizes record).
    pub(super) lens: HashMap<String, u64>,
    /// The sizes record went out already.
    sizes_sent: bool,
}

impl<W: AsyncWrite + Unpin> Out<W> {
    pub(super) fn new(out: W) -> Result<Out<W>> {
        Ok(Out {
            enc: AdaptiveZstd::new(out).context("starting the zstd encoder")?,
            sent: HashSet::new(),
            config_sent: false,
            stats: SendStats::default(),
            lens: HashMap::new(),
            sizes_sent: false,
        })
    }

    /// A stream read from `source`, the config (checked there) sent first.
    pub(super) async fn with_config(out: W, source: &'static str, config: &[u8]) -> Result<Out<W>> {
        let mut o = Out::new(out)?;
        o.stats.source = source;
        records::write_config(&mut o.enc, config).await?;
        o.config_sent = true;
        Ok(o)
    }

    /// Send what is still missing (and the config, if not yet sent) from an
    /// image export.
    pub(super) async fn read_export<R: AsyncRead + Unpin>(
        &mut self,
        export: R,
        plan: &SendPlan,
    ) -> Result<()> {
        let chain = chain_ids(&plan.diff_ids);
        let missing = plan.missing();
        let image_hex = plan.image_id.trim_start_matches("sha256:");
        let mut tar = TarReader::new(export);
        let mut dirs: HashMap<String, usize> = HashMap::new();
        let Out {
            enc,
            sent,
            config_sent,
            stats,
            lens,
            ..
        } = self;

        while let Some(entry) = tar.next().await.context("reading the image export")? {
            if !entry.is_file() {
                continue;
            }
            let path = entry.path.clone();
            let (dir, file) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
            if file == "json" && is_hex64(dir) {
                let json = tar.read_all(1 << 20).await?;
                match identify_v1_dir(dir, &json, &chain) {
                    Some(i) => {
                        dirs.insert(dir.to_string(), i);
                    }
                    None => {
                        tracing::debug!("export: layer directory {dir} not recognised by its json")
                    }
                }
            } else if file == "layer.tar" && is_hex64(dir) {
                match dirs.get(dir).map(|&i| plan.diff_ids[i].clone()) {
                    Some(d) if missing.contains(d.as_str()) && !sent.contains(&d) => {
                        let skip = resume_offset(plan, &d, entry.size);
                        stream_layer(&mut tar, enc, &d, entry.size, skip, plan).await?;
                        stats.count(entry.size, skip);
                        lens.insert(d.clone(), entry.size);
                        sent.insert(d);
                    }
                    Some(d) => {
                        lens.insert(d, entry.size);
                    }
                    None => {
                        let (d, sent_now) =
                            spool_layer(&mut tar, enc, entry.size, &missing, sent, plan).await?;
                        if let Some(skip) = sent_now {
                            stats.count(entry.size, skip);
                            sent.insert(d.clone());
                        }
                        lens.insert(d, entry.size);
                    }
                }
            } else if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                let d = format!("sha256:{hex}");
                if plan.diff_ids.contains(&d) {
                    lens.insert(d.clone(), entry.size);
                }
                if let Some(p) = plan.packed.get(&d) {
                    // A compressed blob (containerd store): sent as it is
                    // where the far side knows it from the manifest, else
                    // unpacked when it must be sent or its length told.
                    let wanted = missing.contains(p.diff_id.as_str()) && !sent.contains(&p.diff_id);
                    if wanted && plan.blobs {
                        let skip = resume_offset(plan, &d, entry.size);
                        plan.board.sending(&p.diff_id, entry.size, skip);
                        records::write_blob_header(enc, &p.diff_id, &d, entry.size, skip).await?;
                        copy_entry(&mut tar, enc, &p.diff_id, entry.size, skip, &plan.read).await?;
                        stats.count(entry.size, skip);
                        sent.insert(p.diff_id.clone());
                    } else if wanted || (plan.sizes && !lens.contains_key(&p.diff_id)) {
                        let (mut file, len) = unpack_layer(&mut tar, p).await?;
                        lens.insert(p.diff_id.clone(), len);
                        if wanted {
                            let skip = send_file(&mut file, enc, &p.diff_id, len, plan).await?;
                            plan.read.fetch_add(len, Ordering::Relaxed);
                            stats.count(len, skip);
                            sent.insert(p.diff_id.clone());
                        }
                    }
                } else if hex == image_hex && !*config_sent {
                    send_config(&mut tar, enc, &plan.image_id).await?;
                    *config_sent = true;
                } else if missing.contains(d.as_str()) && !sent.contains(&d) {
                    let skip = resume_offset(plan, &d, entry.size);
                    stream_layer(&mut tar, enc, &d, entry.size, skip, plan).await?;
                    stats.count(entry.size, skip);
                    sent.insert(d);
                }
            } else if path == format!("{image_hex}.json") && !*config_sent {
                send_config(&mut tar, enc, &plan.image_id).await?;
                *config_sent = true;
            }
        }
        Ok(())
    }

    /// Each held layer's length, as far as it is known (the far side names
    /// any it lacks in its error). Sent before the layers where they are
    /// known before (so the far engine can load the bottom layers early,
    /// [`crate::delta::receive`]), else at the end.
    pub(super) async fn send_sizes(&mut self, plan: &SendPlan) -> Result<()> {
        let sizes: Vec<(String, u64)> = plan.diff_ids[..plan.have]
            .iter()
            .filter_map(|d| self.lens.get(d).map(|&l| (d.clone(), l)))
            .collect();
        records::write_sizes(&mut self.enc, &sizes).await?;
        self.sizes_sent = true;
        Ok(())
    }

    /// Check everything went in, and end the stream.
    pub(super) async fn finish(mut self, plan: &SendPlan) -> Result<SendStats> {
        for d in &plan.diff_ids[plan.have..] {
            if !self.sent.contains(d) {
                bail!("the image export did not contain layer {d}");
            }
        }
        if !self.config_sent {
            bail!("the image export did not contain the image config");
        }
        self.stats.layers_sent = self.sent.len();
        self.stats.layers_skipped = plan.have;
        self.stats.zstd_level = self.enc.level();
        if plan.sizes && !self.sizes_sent {
            self.send_sizes(plan).await?;
        }
        records::write_end(&mut self.enc).await?;
        self.enc
            .shutdown()
            .await
            .context("finishing the delta stream")?;
        Ok(self.stats)
    }
}

pub(super) async fn send_config<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    tar: &mut TarReader<R>,
    enc: &mut W,
    image_id: &str,
) -> Result<()> {
    let config = tar.read_all(records::MAX_CONFIG).await?;
    let got = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
    if got != image_id {
        bail!("the exported config hashes to {got}, not the image ID {image_id}");
    }
    records::write_config(enc, &config).await?;
    Ok(())
}

impl SendStats {
    pub(super) fn count(&mut self, len: u64, skipped: u64) {
        self.raw_bytes += len - skipped;
        self.resumed_bytes += skipped;
    }
}

pub(super) type Raw = Box<dyn AsyncRead + Send + Unpin>;

/// A layer's frame, compressed once for every host of a fan-out, into the
/// stream after its header (the current frame ends first).
pub(super) async fn splice<W: AsyncWrite + Unpin>(
    o: &mut Out<W>,
    frame: Frame,
    len: u64,
    plan: &SendPlan,
) -> Result<()> {
    if frame.len != len {
        bail!(
            "a shared layer is {} bytes, this session read {len}",
            frame.len
        );
    }
    o.enc.end_frame().await.context("ending a zstd frame")?;
    frame.copy_to(o.enc.inner_mut(), &plan.read).await?;
    o.stats.count(len, 0);
    o.stats.shared += 1;
    Ok(())
}
