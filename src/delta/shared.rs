//! Fan-out: a layer that several hosts lack is read and compressed once.
//!
//! Each host's session is a stream of its own (its own inventory, resume
//! offsets and pace), so one compressed stream can't serve them all. What
//! can be shared is the expensive part of a layer: reading it out of the
//! local engine and compressing it. The first session that needs a layer
//! starts its compression into a temporary file (a zstd frame of its own)
//! in a task of its own, so that the session failing does not take the
//! others' layer with it; every session that needs the layer then copies
//! that frame into its stream at its link's pace, following the file as it
//! grows. The far side reads the stream as concatenated frames
//! ([`crate::protocol::handshake::FEATURE_FRAMES`]) and checks the layer
//! against its diffID as always.
//!
//! Memory stays bounded: the frames are on disk, each reader holds one
//! chunk. The files go with the [`Shared`] (a temporary directory).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, OnceCell};

use super::adaptive::{AdaptiveZstd, START_LEVEL};

/// A layer's raw bytes, as the session that first needs it opens them:
/// their length and a reader of exactly that many bytes.
pub type Opened = (u64, Box<dyn AsyncRead + Send + Unpin>);
pub type Open = Pin<Box<dyn Future<Output = Result<Opened>> + Send>>;

/// The layers compressed for the sessions of one fan-out.
pub struct Shared {
    dir: tempfile::TempDir,
    layers: Mutex<HashMap<String, watch::Receiver<Progress>>>,
    /// Layer lengths measured for the sessions (see [`Shared::measured`]).
    lengths: Mutex<HashMap<String, Arc<OnceCell<u64>>>>,
    /// Layers compressed, their raw bytes, and layer copies sent.
    compressed: AtomicU64,
    raw: Arc<AtomicU64>,
    sends: AtomicU64,
}

/// How far a layer's compression has got.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// The layer's raw length, once opened.
    len: Option<u64>,
    /// Raw bytes compressed, compressed bytes in the file.
    raw: u64,
    written: u64,
    done: bool,
    failed: Option<String>,
}

/// What a fan-out's sharing did, for its summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedStats {
    /// Distinct layers read and compressed.
    pub compressed: u64,
    /// Their raw bytes.
    pub raw: u64,
    /// Copies of them sent, over all hosts.
    pub sends: u64,
}

/// One layer's frame as a session copies it.
pub struct Frame {
    path: PathBuf,
    progress: watch::Receiver<Progress>,
    /// The layer's raw length.
    pub len: u64,
}

/// Bytes read from the frame file at a time. Each read is a trip through
/// tokio's blocking pool (a thread hand-off each way), made by every host
/// for every chunk, so the chunks are large; memory stays one chunk per
/// host.
const CHUNK: usize = 1024 * 1024;

impl Shared {
    pub fn new() -> Result<Arc<Shared>> {
        let dir = tempfile::Builder::new()
            .prefix("dos-fanout-")
            .tempdir()
            .context("making a directory for the shared layers")?;
        Ok(Arc::new(Shared {
            dir,
            layers: Mutex::default(),
            lengths: Mutex::default(),
            compressed: AtomicU64::new(0),
            raw: Arc::default(),
            sends: AtomicU64::new(0),
        }))
    }

    pub fn stats(&self) -> SharedStats {
        SharedStats {
            compressed: self.compressed.load(Ordering::Relaxed),
            raw: self.raw.load(Ordering::Relaxed),
            sends: self.sends.load(Ordering::Relaxed),
        }
    }

    /// The length of layer `key`, measured by `measure` for the first
    /// session that asks and handed to the rest: measuring a layer in the
    /// store parses its whole tar-split record and looks at every file,
    /// which every host's session would otherwise repeat. A failed measure
    /// is not kept (each session then falls back on its own).
    pub async fn measured<F>(&self, key: &str, measure: F) -> std::io::Result<u64>
    where
        F: Future<Output = std::io::Result<u64>>,
    {
        let cell = self
            .lengths
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default()
            .clone();
        cell.get_or_try_init(|| measure).await.copied()
    }

    /// The frame of layer `key` (a diffID, or a blob digest), its
    /// compression started with `open` if no session started it before.
    /// Waits until the layer's length is known.
    pub async fn frame(&self, key: &str, open: impl FnOnce() -> Open) -> Result<Frame> {
        let path = self.dir.path().join(key.replace(':', "-"));
        let mut progress = {
            let mut layers = self.layers.lock().unwrap();
            match layers.get(key) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(Progress::default());
                    layers.insert(key.to_string(), rx.clone());
                    self.compressed.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(compress(open(), path.clone(), tx, self.raw.clone()));
                    rx
                }
            }
        };
        let p = progress
            .wait_for(|p| p.len.is_some() || p.failed.is_some())
            .await
            .map_err(|_| anyhow!("the compression of layer {key} stopped"))?
            .clone();
        if let Some(e) = p.failed {
            bail!("compressing layer {key} for the hosts that lack it: {e}");
        }
        let len = p.len.expect("waited for");
        self.sends.fetch_add(1, Ordering::Relaxed);
        Ok(Frame {
            path,
            progress,
            len,
        })
    }
}

/// Read the layer `open` gives and write it as one zstd frame to `path`,
/// telling `tx` how far it got.
async fn compress(open: Open, path: PathBuf, tx: watch::Sender<Progress>, total: Arc<AtomicU64>) {
    let fail = |e: anyhow::Error| {
        tx.send_modify(|p| p.failed = Some(format!("{e:#}")));
    };
    let (len, mut raw) = match open.await {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    // The file exists before the length is told: a session told the length
    // opens the file at once.
    let file = match std::fs::File::create(&path) {
        Ok(f) => f,
        Err(e) => return fail(anyhow!(e).context(format!("creating {}", path.display()))),
    };
    total.fetch_add(len, Ordering::Relaxed);
    tx.send_modify(|p| p.len = Some(len));
    // Written once for every host at a fixed level: no single link's pace
    // can steer it, and the level the adaptive stream starts at is what a
    // fast link settles near.
    let mut enc = match AdaptiveZstd::fixed(Counting::new(file), START_LEVEL) {
        Ok(e) => e,
        Err(e) => return fail(anyhow!(e).context("starting the zstd encoder")),
    };
    let mut buf = vec![0u8; CHUNK];
    let mut done: u64 = 0;
    let result: Result<()> = async {
        loop {
            let n = raw.read(&mut buf).await.context("reading the layer")?;
            if n == 0 {
                break;
            }
            done += n as u64;
            if done > len {
                bail!("the layer grew while being read (more than {len} bytes)");
            }
            // Not flushed: that would end zstd's jobs early. What the
            // workers finished is on disk as the next writes drain it.
            enc.write_all(&buf[..n]).await?;
            let written = enc.inner().written;
            tx.send_modify(|p| {
                p.raw = done;
                p.written = written;
            });
        }
        if done != len {
            bail!("the layer ended after {done} of {len} bytes");
        }
        enc.shutdown().await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            let written = enc.inner().written;
            tx.send_modify(|p| {
                p.raw = done;
                p.written = written;
                p.done = true;
            });
        }
        Err(e) => fail(e),
    }
}

impl Frame {
    /// Copy the frame to `out` as it grows; `read` counts the raw bytes it
    /// stands for (for the progress display and pacing).
    pub async fn copy_to<W: AsyncWrite + Unpin>(
        mut self,
        out: &mut W,
        read: &AtomicU64,
    ) -> Result<()> {
        let file = std::fs::File::open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        let file = Arc::new(file);
        let mut buf = vec![0u8; CHUNK];
        let (mut pos, mut counted) = (0u64, 0u64);
        loop {
            let p = self.progress.borrow_and_update().clone();
            if let Some(e) = p.failed {
                bail!("compressing the layer for the hosts that lack it: {e}");
            }
            if pos < p.written {
                let want = (p.written - pos).min(CHUNK as u64) as usize;
                buf = read_at(file.clone(), buf, want, pos)
                    .await
                    .context("reading a shared layer")?;
                out.write_all(&buf[..want]).await?;
                pos += want as u64;
                // The raw bytes this much of the frame stands for.
                let raw = if p.written == 0 {
                    0
                } else {
                    (p.raw as u128 * pos as u128 / p.written as u128) as u64
                };
                read.fetch_add(raw.saturating_sub(counted), Ordering::Relaxed);
                counted = counted.max(raw);
            } else if p.done {
                read.fetch_add(self.len.saturating_sub(counted), Ordering::Relaxed);
                return Ok(());
            } else if self.progress.changed().await.is_err() {
                // The compressing task ended without a last word.
                let p = self.progress.borrow().clone();
                if !(p.done && pos >= p.written) {
                    bail!("the compression of a shared layer stopped");
                }
            }
        }
    }
}

/// Fill `buf[..want]` from `file` at `pos`, in a blocking thread (one
/// positioned read: no seek of a shared cursor).
async fn read_at(
    file: Arc<std::fs::File>,
    mut buf: Vec<u8>,
    want: usize,
    pos: u64,
) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf[..want], pos).map(|()| buf)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The frame file, written in place and counted: a byte counted is in the
/// file for every reader. (tokio's file hands writes to a background task,
/// so a reader could miss bytes it was told of; a write into the page cache
/// takes microseconds, next to the compression that precedes it.)
struct Counting {
    file: std::fs::File,
    written: u64,
}

impl Counting {
    fn new(file: std::fs::File) -> Counting {
        Counting { file, written: 0 }
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = std::io::Write::write(&mut self.file, buf)?;
        self.written += n as u64;
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opener(data: Vec<u8>) -> impl FnOnce() -> Open {
        move || {
            Box::pin(async move {
                let len = data.len() as u64;
                Ok((
                    len,
                    Box::new(std::io::Cursor::new(data)) as Box<dyn AsyncRead + Send + Unpin>,
                ))
            })
        }
    }

    /// Five sessions ask for a layer's length at once: it is measured once;
    /// a failed measure is not kept.
    #[tokio::test]
    async fn a_layer_is_measured_once_for_every_session() {
        let shared = Shared::new().unwrap();
        let calls = AtomicU64::new(0);
        let measure = || async {
            calls.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
            Ok(42)
        };
        let lens =
            futures_util::future::join_all((0..5).map(|_| shared.measured("sha256:aa", measure())))
                .await;
        assert!(lens.iter().all(|l| *l.as_ref().unwrap() == 42));
        assert_eq!(calls.load(Ordering::Relaxed), 1);

        let failed = shared
            .measured("sha256:bb", async { Err(std::io::Error::other("gone")) })
            .await;
        assert!(failed.is_err());
        assert_eq!(
            shared.measured("sha256:bb", async { Ok(7) }).await.unwrap(),
            7
        );
    }

    /// A session told a layer's length opens its frame file at once, on
    /// whichever thread it wakes: the file is there by then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_frame_file_exists_once_the_length_is_told() {
        for _ in 0..300 {
            let shared = Shared::new().unwrap();
            let s = shared.clone();
            let waiting = tokio::spawn(async move {
                let f = s.frame("sha256:aa", opener(vec![7u8; 1000])).await?;
                let mut out = Vec::new();
                f.copy_to(&mut out, &AtomicU64::new(0)).await?;
                anyhow::Ok(out)
            });
            let f = shared
                .frame("sha256:aa", opener(vec![7u8; 1000]))
                .await
                .unwrap();
            f.copy_to(&mut Vec::new(), &AtomicU64::new(0))
                .await
                .unwrap();
            waiting.await.unwrap().unwrap();
        }
    }

    /// Two sessions take the same layer: it is compressed once, and each
    /// gets a frame that decodes to the layer.
    #[tokio::test]
    async fn a_layer_is_compressed_once_for_every_session() {
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 97) as u8).collect();
        let shared = Shared::new().unwrap();
        let mut outs = Vec::new();
        for _ in 0..2 {
            let f = shared
                .frame("sha256:aa", opener(data.clone()))
                .await
                .unwrap();
            assert_eq!(f.len, data.len() as u64);
            let read = AtomicU64::new(0);
            let mut out = Vec::new();
            f.copy_to(&mut out, &read).await.unwrap();
            assert_eq!(read.load(Ordering::Relaxed), data.len() as u64);
            outs.push(out);
        }
        for out in outs {
            assert!(out.len() < data.len() / 10);
            assert_eq!(zstd::stream::decode_all(&out[..]).unwrap(), data);
        }
        assert_eq!(
            shared.stats(),
            SharedStats {
                compressed: 1,
                raw: data.len() as u64,
                sends: 2
            }
        );
    }

    /// A layer that is not as long as it was said to be fails every
    /// session that takes it, not just the first.
    #[tokio::test]
    async fn a_short_layer_fails_every_reader() {
        let shared = Shared::new().unwrap();
        let open = || -> Open {
            Box::pin(async {
                Ok((
                    10u64,
                    Box::new(std::io::Cursor::new(vec![1u8; 4]))
                        as Box<dyn AsyncRead + Send + Unpin>,
                ))
            })
        };
        for _ in 0..2 {
            // Failed as it is copied, or at once where it failed before.
            let e = match shared.frame("sha256:bb", open).await {
                Ok(f) => f
                    .copy_to(&mut Vec::new(), &AtomicU64::new(0))
                    .await
                    .unwrap_err(),
                Err(e) => e,
            };
            assert!(format!("{e:#}").contains("4 of 10"), "{e:#}");
        }
        assert_eq!(shared.stats().compressed, 1);
    }
}
