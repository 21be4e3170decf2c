//! Pushing side of the delta path: send only the layers the far side lacks
//! (plus the config), zstd-compressed, as records. They come from the local
//! daemon's store where this process can read it ([`super::store`]), else
//! from what the daemon pushes into the capture registry, else from its
//! export, read as it streams.
//!
//! In an export, layers are recognised before their bytes arrive wherever
//! its layout allows (legacy `<v1 id>/json` directories, or
//! `blobs/sha256/<diffID>` in OCI-style exports), so a layer the far side
//! has is skipped without being buffered. A layer that can't be recognised
//! that way is spooled to a temp file while hashed, then sent or dropped by
//! its digest. The far side checks every layer sent against its diffID.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc::UnboundedReceiver;

use super::records;
use super::shared::Open;
use super::store::{Layer, LocalStore};
use crate::capture::Captured;
use crate::docker::{Daemon, DaemonError};

mod content;
mod layer;
mod out;
mod plan;

pub use content::send_content;

use layer::{resume_offset, send_file, write_header};
use out::{splice, Out, Raw};
pub use plan::{SendPlan, SendStats};

/// An image's export (`docker save`).
///
/// With `now`, the request goes out at once and its first bytes are
/// awaited in the background: Docker 20.10 writes the whole export before
/// its first byte (about a second per 200 MB here), which then overlaps
/// ssh connecting and the far side answering. Should the export not be
/// wanted after all, dropping the reader drops the request. Without `now`,
/// the request is made on the first read.
pub fn start_export(
    daemon: &Daemon,
    image_id: &str,
    now: bool,
) -> Box<dyn AsyncRead + Send + Unpin + 'static> {
    // The daemon broke off its export (it stopped, it restarted): that is
    // the local daemon lost, whatever the reader makes of it.
    let host = daemon.host.clone();
    let mut stream: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>> =
        Box::pin(daemon.api.export_image(image_id).map_err(move |e| {
            io::Error::other(DaemonError::Unreachable {
                host: host.clone(),
                cause: format!("its export of the image broke off: {e}"),
            })
        }));
    if !now {
        return Box::new(tokio_util::io::StreamReader::new(stream));
    }
    // Aborted if dropped: a reader dropped before the first bytes come
    // takes the request with it.
    let head = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        let first = stream.next().await;
        (first, stream)
    }));
    let whole = futures_util::stream::once(async move {
        let (first, rest) = head
            .await
            .map_err(|e| io::Error::other(format!("exporting the image: {e}")))?;
        Ok::<_, io::Error>(futures_util::stream::iter(first).chain(rest))
    })
    .try_flatten();
    Box::new(tokio_util::io::StreamReader::new(Box::pin(whole)))
}

/// Send the missing layers and the config to `out`, then finish the stream.
pub async fn send<R, W>(export: R, plan: &SendPlan, out: W) -> Result<SendStats>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut o = Out::new(out)?;
    o.stats.source = "docker save";
    o.read_export(export, plan).await?;
    o.finish(plan).await
}

/// The same stream, from what the daemon pushed into the capture registry
/// ([`crate::capture`]). Should the push end without every missing layer
/// (an error, or a daemon that forgot what it pushed), the rest comes from
/// `export()`.
pub async fn send_captured<R, W, F>(
    mut captured: UnboundedReceiver<Captured>,
    plan: &SendPlan,
    out: W,
    export: F,
) -> Result<SendStats>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: FnOnce() -> R,
{
    let mut o = Out::new(out)?;
    o.stats.source = "docker push to the capture registry";
    let missing = plan.missing();
    while !(o.config_sent && missing.iter().all(|d| o.sent.contains(*d))) {
        match captured.recv().await {
            Some(Captured::Blob {
                diff_id, raw, file, ..
            }) => {
                let Some(file) = file else { continue };
                if diff_id == plan.image_id && !o.config_sent {
                    if raw > records::MAX_CONFIG {
                        bail!("the image config is {raw} bytes");
                    }
                    let mut config = Vec::new();
                    tokio::fs::File::from_std(file)
                        .read_to_end(&mut config)
                        .await
                        .context("reading the captured config")?;
                    records::write_config(&mut o.enc, &config).await?;
                    o.config_sent = true;
                } else if missing.contains(diff_id.as_str()) && !o.sent.contains(&diff_id) {
                    let mut f = tokio::fs::File::from_std(file);
                    let skip = send_file(&mut f, &mut o.enc, &diff_id, raw, plan).await?;
                    plan.read.fetch_add(raw, Ordering::Relaxed);
                    o.stats.count(raw, skip);
                    o.sent.insert(diff_id);
                }
            }
            ended => {
                let why = match ended {
                    Some(Captured::Ended(Some(e))) => format!("failed ({e})"),
                    _ => "ended".into(),
                };
                tracing::info!("dos: the daemon's push into the capture registry {why} before handing over every missing layer; reading the rest from docker save");
                o.stats.source = "docker push to the capture registry, then docker save";
                o.read_export(export(), plan).await?;
                break;
            }
        }
    }
    o.finish(plan).await
}

/// The same stream, rebuilt from the local daemon's store
/// ([`super::store`]), bottom layer first. Should a layer not be readable
/// there after all (checked before its first byte is sent), that layer and
/// the rest come from `export()`.
pub async fn send_stored<R, W, F>(
    store: LocalStore,
    plan: &SendPlan,
    out: W,
    export: F,
) -> Result<SendStats>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: FnOnce() -> R,
{
    let mut o = Out::with_config(out, "the daemon's layer store", store.config()).await?;
    if plan.sizes {
        for layer in &store.layers()[..plan.have] {
            let len = measure(plan, layer).await.with_context(|| {
                format!(
                    "reading the length of layer {} in the daemon's store",
                    layer.diff_id
                )
            })?;
            o.lens.insert(layer.diff_id.clone(), len);
        }
        o.send_sizes(plan).await?;
    }
    for layer in &store.layers()[plan.have..] {
        // A layer the image repeats (identical steps) crosses once.
        if o.sent.contains(&layer.diff_id) {
            continue;
        }
        let len = match measure(plan, layer).await {
            Ok(len) => len,
            Err(e) => {
                tracing::info!(
                    "dos: layer {} can't be read from the daemon's store ({e}); reading the rest by docker save",
                    layer.diff_id
                );
                o.stats.source = "the daemon's layer store, then docker save";
                o.read_export(export(), plan).await?;
                break;
            }
        };
        let skip = resume_offset(plan, &layer.diff_id, len);
        if let Some(shared) = plan.shared.as_deref().filter(|_| skip == 0) {
            let l = layer.clone();
            let frame = shared
                .frame(&layer.diff_id, move || -> Open {
                    Box::pin(async move { Ok((len, Box::new(l.reader(0)) as Raw)) })
                })
                .await?;
            write_header(&mut o.enc, &layer.diff_id, len, 0, &plan.board).await?;
            splice(&mut o, frame, len, plan).await?;
            o.sent.insert(layer.diff_id.clone());
            continue;
        }
        write_header(&mut o.enc, &layer.diff_id, len, skip, &plan.board).await?;
        // Never more than the header announced; what is left over means the
        // store changed while being read.
        let mut body = layer.reader(skip).take(len - skip);
        let sending = || format!("sending layer {} from the daemon's store", layer.diff_id);
        let copied = tokio::io::copy_buf(&mut body, &mut o.enc)
            .await
            .with_context(sending)?;
        if copied != len - skip {
            bail!(
                "layer {} in the daemon's store: {} of {len} bytes",
                layer.diff_id,
                skip + copied
            );
        }
        if !body
            .into_inner()
            .fill_buf()
            .await
            .with_context(sending)?
            .is_empty()
        {
            bail!(
                "layer {} grew in the daemon's store while being read",
                layer.diff_id
            );
        }
        plan.read.fetch_add(copied, Ordering::Relaxed);
        o.stats.count(len, skip);
        o.sent.insert(layer.diff_id.clone());
    }
    o.finish(plan).await
}

/// A stored layer's length; measured once for all the hosts of a fan-out.
async fn measure(plan: &SendPlan, layer: &Layer) -> std::io::Result<u64> {
    match plan.shared.as_deref() {
        Some(shared) => shared.measured(&layer.diff_id, layer.tar_len()).await,
        None => layer.tar_len().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use crate::delta::records::Record;
    use crate::delta::store::fixture;
    use crate::tarstream;

    /// Send one layer from a fixture store (falling back to an OCI-style
    /// export holding the same layer), and read the stream back.
    async fn send_one(on_disk: &[(&str, &[u8])]) -> (SendStats, Vec<u8>, Vec<u8>) {
        let (stats, tar, config, _) = send_one_with(on_disk, None).await;
        (stats, tar, config)
    }

    /// [`send_one`], with a fan-out's shared layers; also the wire bytes.
    async fn send_one_with(
        on_disk: &[(&str, &[u8])],
        shared: Option<Arc<crate::delta::shared::Shared>>,
    ) -> (SendStats, Vec<u8>, Vec<u8>, Vec<u8>) {
        let root = tempfile::tempdir().unwrap();
        let files: &[(&str, &[u8])] = &[("a/f", b"12345"), ("g", &[7u8; 3000])];
        let (image_id, tar) = fixture::store(root.path(), files, on_disk);
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let store =
            LocalStore::locate(root.path(), &image_id, std::slice::from_ref(&diff_id)).unwrap();
        let config = store.config().to_vec();
        let mut export = Vec::new();
        for (hex, body) in [(&diff_id[7..], &tar), (&image_id[7..], &config)] {
            let name = format!("blobs/sha256/{hex}");
            export.extend(tarstream::file_header(&name, body.len() as u64).unwrap());
            export.extend_from_slice(body);
            export.extend(tarstream::pad_for(body.len() as u64));
        }
        export.extend(tarstream::trailer());
        let plan = SendPlan {
            image_id,
            diff_ids: vec![diff_id.clone()],
            have: 0,
            resume: HashMap::new(),
            read: Arc::new(AtomicU64::new(0)),
            sizes: false,
            packed: HashMap::new(),
            blobs: false,
            board: crate::progress::Board::unseen(),
            shared,
        };
        let mut wire = Vec::new();
        let stats = send_stored(store, &plan, &mut wire, || &export[..])
            .await
            .unwrap();
        let raw = zstd::stream::decode_all(&wire[..]).unwrap();
        let mut r = &raw[..];
        let len = tar.len() as u64;
        let config_len = config.len() as u64;
        expect(&mut r, Record::Config { len: config_len }, &config).await;
        expect(&mut r, Record::Layer { diff_id, len }, &tar).await;
        expect(&mut r, Record::End, &[]).await;
        (stats, tar, config, wire)
    }

    async fn expect(r: &mut &[u8], rec: Record, body: &[u8]) {
        assert_eq!(records::read_header(r).await.unwrap(), rec);
        let mut got = vec![0u8; body.len()];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(got, body);
    }

    #[tokio::test]
    async fn layers_come_from_the_store() {
        let on_disk: &[(&str, &[u8])] = &[("a/f", b"12345"), ("g", &[7u8; 3000])];
        let (stats, tar, _) = send_one(on_disk).await;
        assert_eq!(stats.source, "the daemon's layer store");
        assert_eq!((stats.layers_sent, stats.raw_bytes), (1, tar.len() as u64));
    }

    /// With a fan-out's shared layers the layer crosses as a zstd frame of
    /// its own between the stream's others, and reads back the same.
    #[tokio::test]
    async fn a_shared_layer_crosses_as_a_frame_of_its_own() {
        let on_disk: &[(&str, &[u8])] = &[("a/f", b"12345"), ("g", &[7u8; 3000])];
        let shared = crate::delta::shared::Shared::new().unwrap();
        let (stats, _, _, wire) = send_one_with(on_disk, Some(shared.clone())).await;
        assert_eq!((stats.layers_sent, stats.shared), (1, 1));
        assert_eq!(shared.stats().compressed, 1);
        let frames = wire
            .windows(4)
            .filter(|w| *w == [0x28, 0xb5, 0x2f, 0xfd])
            .count();
        assert!(frames >= 3, "{frames} zstd frames");
    }

    /// A file of another size in the store: checked before the layer's first
    /// byte, so the layer comes whole from the export instead.
    #[tokio::test]
    async fn a_layer_the_store_cannot_give_comes_from_the_export() {
        let (stats, _, _) = send_one(&[("a/f", b"123"), ("g", &[7u8; 3000])]).await;
        assert_eq!(stats.source, "the daemon's layer store, then docker save");
        assert_eq!(stats.layers_sent, 1);
    }
}
