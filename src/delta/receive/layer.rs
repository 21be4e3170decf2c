//! One layer arriving: checked against its diffID (or blob digest) as it
//! streams, spooled, and fed to the load's archive.

use std::collections::HashSet;
use std::io;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::delta::spool::{self, Entry};
use crate::delta::unpack::{Hashing, Unpack};
use crate::engine::Compression;
use crate::tarstream;

use super::archive::layer_entry;
use super::plan::{ReceivePlan, CHUNK};
use super::segments::Loads;

pub(super) fn check_wanted(
    expected: &HashSet<String>,
    got: &HashSet<String>,
    diff_id: &str,
) -> Result<()> {
    if !expected.contains(diff_id) || got.contains(diff_id) {
        bail!("the pusher sent layer {diff_id}, which was not asked for");
    }
    Ok(())
}

/// A layer arriving: as its tar, or as a compressed blob.
pub(super) struct Arriving<'a> {
    /// What it is called (in the spool, in an OCI layout): its diffID, or
    /// the blob's digest.
    pub(super) name: &'a str,
    pub(super) diff_id: &'a str,
    /// Bytes in all, and where the wire's start (the rest is spooled).
    pub(super) len: u64,
    pub(super) offset: u64,
    /// A blob's compression (it is unpacked as it comes, to check the
    /// diffID); None for a tar.
    pub(super) unpack: Option<Compression>,
}

impl<'a> Arriving<'a> {
    pub(super) fn tar(diff_id: &'a str, len: u64, offset: u64) -> Arriving<'a> {
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
pub(super) struct Check {
    pub(super) bytes: Sha256,
    pub(super) tar: Option<Unpack<Hashing<io::Sink>>>,
}

impl Check {
    pub(super) fn new(a: &Arriving) -> Result<Check> {
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

    pub(super) fn update(&mut self, b: &[u8]) -> Result<(), String> {
        self.bytes.update(b);
        match self.tar.as_mut() {
            Some(t) => t.write(b).map_err(|e| format!("does not unpack ({e})")),
            None => Ok(()),
        }
    }

    pub(super) fn finish(self, a: &Arriving) -> Result<(), String> {
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
pub(super) async fn layer<R: AsyncRead + Unpin>(
    dec: &mut R,
    out: &mut Loads,
    plan: &mut ReceivePlan,
    keep: &HashSet<String>,
    a: Arriving<'_>,
) -> Result<()> {
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
    out.send(Bytes::copy_from_slice(&tarstream::file_header(
        &layer_entry(plan.layout, a.diff_id, a.name),
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
            out.send(Bytes::from(buf)).await?;
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
        out.send(Bytes::from(buf)).await?;
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
    out.send(Bytes::from(tarstream::pad_for(len))).await?;
    // Not fsynced: the spool outlives a dead link, not a crashed machine, and
    // whatever a crash leaves is re-hashed before it is used.
    if let Some(e) = entry.filter(Entry::usable) {
        plan.held.insert(name.to_string(), e);
    }
    Ok(())
}
