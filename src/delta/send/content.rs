//! The delta stream out of the containerd content store: blobs as the
//! source's manifest names them, as stored or unpacked to tars.

use std::io;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite};

use super::layer::{resume_offset, send_file, unpack_file, write_header};
use super::out::{splice, Out, Raw};
use super::plan::{SendPlan, SendStats};
use crate::delta::content::ContentStore;
use crate::delta::records;
use crate::delta::shared::Open;
use crate::engine::oci::Descriptor;
use crate::engine::{Compression, Packed};

/// The same stream, from the containerd content store
/// ([`super::content`]): the config, then each missing layer's blob as the
/// source's manifest names it (`layers`), compressed or not, as stored.
/// Should a blob not be there as named (checked before its first byte is
/// sent), it and the rest come from `export()`.
pub async fn send_content<R, W, F>(
    store: ContentStore,
    layers: &[Descriptor],
    plan: &SendPlan,
    out: W,
    export: F,
) -> Result<SendStats>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: FnOnce() -> R,
{
    let mut o = Out::with_config(out, "the containerd content store", store.config()).await?;
    for (d, blob) in plan.diff_ids.iter().zip(layers).skip(plan.have) {
        // A layer the image repeats (identical steps) crosses once.
        if o.sent.contains(d) {
            continue;
        }
        let file = match store.blob(&blob.digest, blob.size) {
            Ok(f) => f,
            Err(e) => {
                tracing::info!("dos: layer {d} can't be read from the content store ({e}); reading the rest by docker save");
                o.stats.source = "the containerd content store, then docker save";
                o.read_export(export(), plan).await?;
                break;
            }
        };
        let compression = Compression::of(&blob.media_type);
        let packed = compression.is_some();
        // Sent as stored where the far side takes blobs or the blob is a
        // tar; else unpacked.
        let as_stored = plan.blobs || !packed;
        let key = if as_stored && packed { &blob.digest } else { d };
        if let Some(shared) = plan
            .shared
            .as_deref()
            .filter(|_| !plan.resume.contains_key(key))
        {
            let size = blob.size;
            let unpack = compression.filter(|_| !as_stored).map(|c| Packed {
                diff_id: d.clone(),
                compression: c,
            });
            let frame = shared
                .frame(key, move || -> Open {
                    Box::pin(async move {
                        Ok(match unpack {
                            None => (size, Box::new(tokio::fs::File::from_std(file)) as Raw),
                            Some(p) => {
                                let (tar, len) =
                                    tokio::task::spawn_blocking(move || unpack_file(file, &p))
                                        .await
                                        .context("unpacking a blob")??;
                                (len, Box::new(tar) as Raw)
                            }
                        })
                    })
                })
                .await?;
            let len = frame.len;
            if as_stored && packed {
                plan.board.sending(d, len, 0);
                records::write_blob_header(&mut o.enc, d, &blob.digest, len, 0).await?;
            } else {
                write_header(&mut o.enc, d, len, 0, &plan.board).await?;
            }
            splice(&mut o, frame, len, plan).await?;
            o.sent.insert(d.clone());
            continue;
        }
        if let Some(c) = compression.filter(|_| !plan.blobs) {
            // The far engine takes tars: unpacked here (and checked), zstd
            // on the wire costs fewer bytes than the gzip blob.
            let packed = Packed {
                diff_id: d.clone(),
                compression: c,
            };
            let (mut tar, len) = tokio::task::spawn_blocking(move || unpack_file(file, &packed))
                .await
                .context("unpacking a blob")??;
            let skip = send_file(&mut tar, &mut o.enc, d, len, plan).await?;
            plan.read.fetch_add(len, Ordering::Relaxed);
            o.stats.count(len, skip);
            o.sent.insert(d.clone());
            continue;
        }
        let len = blob.size;
        // A plain-tar blob (a `docker load`ed layer) is the tar itself.
        let skip = resume_offset(plan, if packed { &blob.digest } else { d }, len);
        if packed {
            plan.board.sending(d, len, skip);
            records::write_blob_header(&mut o.enc, d, &blob.digest, len, skip).await?;
        } else {
            write_header(&mut o.enc, d, len, skip, &plan.board).await?;
        }
        let mut f = tokio::fs::File::from_std(file);
        f.seek(io::SeekFrom::Start(skip)).await?;
        let copied = tokio::io::copy(&mut (&mut f).take(len - skip), &mut o.enc)
            .await
            .with_context(|| format!("sending layer {d} from the content store"))?;
        if copied != len - skip {
            bail!(
                "blob {} in the content store: {} of {len} bytes",
                blob.digest,
                skip + copied
            );
        }
        plan.read.fetch_add(copied, Ordering::Relaxed);
        o.stats.count(len, skip);
        o.sent.insert(d.clone());
    }
    o.finish(plan).await
}
