//! One layer into the stream: its header (resumed where the far spool
//! holds a prefix), its bytes from an export entry, a spool file or an
//! unpacked blob.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use crate::delta::records;
use crate::delta::unpack::{Hashing, Unpack};
use crate::engine::Packed;
use crate::progress::Board;
use crate::tarstream::TarReader;

use super::plan::{SendPlan, CHUNK};

/// How many leading bytes of a layer the far side's spool holds; a claim
/// past the layer's end is ignored (the layer is sent whole).
pub(super) fn resume_offset(plan: &SendPlan, diff_id: &str, len: u64) -> u64 {
    plan.resume
        .get(diff_id)
        .copied()
        .filter(|&o| o <= len)
        .unwrap_or(0)
}

pub(super) async fn write_header<W: AsyncWrite + Unpin>(
    enc: &mut W,
    diff_id: &str,
    len: u64,
    skip: u64,
    board: &Board,
) -> Result<()> {
    board.sending(diff_id, len, skip);
    if skip > 0 {
        tracing::info!(
            "dos: resuming layer {} at {skip} of {len} bytes",
            &diff_id[..19.min(diff_id.len())]
        );
        records::write_resume_header(enc, diff_id, len, skip).await?;
    } else {
        records::write_layer_header(enc, diff_id, len).await?;
    }
    Ok(())
}

/// Copy a layer of known identity into the stream, minus the first `skip`
/// bytes. Not hashed here: the far side checks every layer against its
/// diffID before anything is loaded, and hashing on this side too took 9%
/// of the pusher's CPU, which the link's other end shares on a fast link.
pub(super) async fn stream_layer<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    tar: &mut TarReader<R>,
    enc: &mut W,
    diff_id: &str,
    len: u64,
    skip: u64,
    plan: &SendPlan,
) -> Result<()> {
    write_header(enc, diff_id, len, skip, &plan.board).await?;
    copy_entry(tar, enc, diff_id, len, skip, &plan.read).await
}

/// Copy the export's current entry (layer `diff_id`, as a tar or a blob)
/// into the stream, minus its first `skip` bytes.
pub(super) async fn copy_entry<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    tar: &mut TarReader<R>,
    enc: &mut W,
    diff_id: &str,
    len: u64,
    skip: u64,
    read: &AtomicU64,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    loop {
        let n = tar
            .read(&mut buf)
            .await
            .context("reading a layer from the export")?;
        if n == 0 {
            break;
        }
        read.fetch_add(n as u64, Ordering::Relaxed);
        let from = skip.saturating_sub(pos).min(n as u64) as usize;
        pos += n as u64;
        enc.write_all(&buf[from..n])
            .await
            .context("sending a layer")?;
    }
    if pos != len {
        bail!("layer {diff_id} in the export: {pos} of {len} bytes");
    }
    tracing::debug!(layer = diff_id, bytes = len, "layer sent");
    Ok(())
}

/// A layer we couldn't place: hash it into a temp file, then send it if the
/// far side needs it. Returns its diffID, and the bytes skipped if it was sent.
pub(super) async fn spool_layer<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    tar: &mut TarReader<R>,
    enc: &mut W,
    len: u64,
    missing: &HashSet<&str>,
    sent: &HashSet<String>,
    plan: &SendPlan,
) -> Result<(String, Option<u64>)> {
    let spool = tempfile::tempfile().context("creating a spool file")?;
    let mut file = tokio::fs::File::from_std(spool);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tar.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).await?;
    }
    let d = format!("sha256:{}", hex::encode(hasher.finalize()));
    if !missing.contains(d.as_str()) || sent.contains(&d) {
        return Ok((d, None));
    }
    file.flush().await?;
    let skip = send_file(&mut file, enc, &d, len, plan).await?;
    Ok((d, Some(skip)))
}

/// A compressed layer blob, unpacked into a temp file and checked against
/// its diffID. Returns the file (rewound) and the tar's length.
pub(super) async fn unpack_layer<R: AsyncRead + Unpin>(
    tar: &mut TarReader<R>,
    packed: &Packed,
) -> Result<(tokio::fs::File, u64)> {
    let unpacking = || format!("unpacking layer {} from the export", packed.diff_id);
    let sink = Hashing::new(tempfile::tempfile().context("creating a spool file")?);
    let mut dec = Unpack::new(packed.compression, sink).with_context(unpacking)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tar.read(&mut buf).await.with_context(unpacking)?;
        if n == 0 {
            break;
        }
        dec.write(&buf[..n]).with_context(unpacking)?;
    }
    let sink = dec.finish().with_context(unpacking)?;
    let got = sink.digest();
    if got != packed.diff_id {
        bail!(
            "layer {} in the export unpacks to content hashing to {got}",
            packed.diff_id
        );
    }
    let mut file = tokio::fs::File::from_std(sink.inner);
    file.rewind().await?;
    Ok((file, sink.len))
}

/// A compressed blob in a file, unpacked into a temp file and checked
/// against its diffID (blocking). Returns the file (rewound) and the tar's
/// length.
pub(super) fn unpack_file(
    mut blob: std::fs::File,
    packed: &Packed,
) -> Result<(tokio::fs::File, u64)> {
    use std::io::{Read, Seek};
    let unpacking = || format!("unpacking layer {} from the content store", packed.diff_id);
    let sink = Hashing::new(tempfile::tempfile().context("creating a spool file")?);
    let mut dec = Unpack::new(packed.compression, sink).with_context(unpacking)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = blob.read(&mut buf).with_context(unpacking)?;
        if n == 0 {
            break;
        }
        dec.write(&buf[..n]).with_context(unpacking)?;
    }
    let mut sink = dec.finish().with_context(unpacking)?;
    if sink.digest() != packed.diff_id {
        bail!(
            "layer {} in the content store unpacks to content hashing to {}",
            packed.diff_id,
            sink.digest()
        );
    }
    sink.inner.rewind()?;
    Ok((tokio::fs::File::from_std(sink.inner), sink.len))
}

/// A layer of known identity held in a file: its record, minus what the
/// far side's spool holds. Returns the bytes skipped.
pub(super) async fn send_file<W: AsyncWrite + Unpin>(
    file: &mut tokio::fs::File,
    enc: &mut W,
    diff_id: &str,
    len: u64,
    plan: &SendPlan,
) -> Result<u64> {
    let skip = resume_offset(plan, diff_id, len);
    file.seek(io::SeekFrom::Start(skip)).await?;
    write_header(enc, diff_id, len, skip, &plan.board).await?;
    let copied = tokio::io::copy(file, enc).await?;
    if copied != len - skip {
        bail!(
            "layer {diff_id} from a temp file: {copied} of {} bytes",
            len - skip
        );
    }
    Ok(skip)
}

pub(super) fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
