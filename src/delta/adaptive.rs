//! zstd on the wire at a level that follows the link, like `zstd --adapt`.
//!
//! A slow link leaves the compressor waiting for the link to take its
//! output: the spare time buys a higher level, hence fewer bytes and a
//! shorter transfer. On a fast link the compressor is what the link waits
//! for: a lower level saves time. Every half second the encoder looks at
//! how long its writes were held up by the link and at the rate the link
//! took bytes, and moves the level one step. zstd's multi-threaded mode
//! applies a new level to the next job, mid-frame, so the stream and the
//! far side's decoder are unchanged.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use zstd::stream::raw::{CParameter, Encoder, InBuffer, Operation, OutBuffer};

/// Where a stream starts: level 3 with a 16 MiB window and long-distance
/// matching compressed a 316 MB three-layer image to 0.82× the bytes of
/// gzip -6 at ~250 MB/s on two threads (zstd CLI, this project's benchmark
/// image). The window also bounds the far side's decoder memory.
pub const START_LEVEL: i32 = 3;
pub const WINDOW_LOG: u32 = 24;
/// Bounds of adaptation. At level 8 the pusher peaked at 63 MiB in the
/// benchmark (budget 64 MiB); level 6 halves the match tables of level 8.
pub const MIN_LEVEL: i32 = 1;
pub const MAX_LEVEL: i32 = 6;

const PERIOD: Duration = Duration::from_millis(500);
/// A link taking compressed bytes slower than this while holding writes up
/// is worth spending CPU on (fast links are left at or below the start).
const SLOW_LINK: f64 = 8e6;
/// A link taking compressed bytes faster than this without holding writes
/// up most of the time: on two cores (unshaped, in the benchmark) level 1
/// moved the image 0.25 s sooner than level 3, though the link held writes
/// up 20-50% of the time at level 2.
const FAST_LINK: f64 = 20e6;
/// Held up less than this share of a period: the compressor is far behind
/// the link.
const FAR_BEHIND: f64 = 0.1;
const BUF: usize = 128 * 1024;

pub struct AdaptiveZstd<W> {
    inner: W,
    enc: Encoder<'static>,
    /// Compressed bytes not yet written: `buf[pos..len]`.
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
    level: i32,
    finished: bool,
    // The current measuring period.
    since: Instant,
    blocked_since: Option<Instant>,
    blocked: Duration,
    written: u64,
    /// Off for a stream at a fixed level.
    adapting: bool,
}

impl<W: AsyncWrite + Unpin> AdaptiveZstd<W> {
    pub fn new(inner: W) -> io::Result<AdaptiveZstd<W>> {
        AdaptiveZstd::at(inner, START_LEVEL, true)
    }

    /// The same encoder at a fixed level (a frame written for several
    /// links, [`super::shared`]).
    pub fn fixed(inner: W, level: i32) -> io::Result<AdaptiveZstd<W>> {
        AdaptiveZstd::at(inner, level, false)
    }

    fn at(inner: W, level: i32, adapting: bool) -> io::Result<AdaptiveZstd<W>> {
        let mut enc = Encoder::new(level)?;
        for p in [
            CParameter::NbWorkers(2),
            CParameter::WindowLog(WINDOW_LOG),
            CParameter::EnableLongDistanceMatching(true),
        ] {
            enc.set_parameter(p)?;
        }
        Ok(AdaptiveZstd {
            inner,
            enc,
            buf: vec![0u8; BUF].into_boxed_slice(),
            pos: 0,
            len: 0,
            level,
            finished: false,
            since: Instant::now(),
            blocked_since: None,
            blocked: Duration::ZERO,
            written: 0,
            adapting,
        })
    }

    pub fn inner(&self) -> &W {
        &self.inner
    }

    /// End the current frame and write it out; what follows starts a new
    /// one. Between the two, bytes written to [`Self::inner_mut`] go on the
    /// wire as they are: a frame compressed elsewhere ([`super::shared`]).
    pub async fn end_frame(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_out(cx, true)).await?;
        self.enc.reinit()?;
        self.finished = false;
        Ok(())
    }

    pub fn inner_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    pub fn level(&self) -> i32 {
        self.level
    }

    /// Write out what has been compressed.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pos < self.len {
            match Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.pos..self.len]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.pos += n;
                    self.written += n as u64;
                    if let Some(s) = self.blocked_since.take() {
                        self.blocked += s.elapsed();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.blocked_since.get_or_insert_with(Instant::now);
                    return Poll::Pending;
                }
            }
        }
        self.pos = 0;
        self.len = 0;
        Poll::Ready(Ok(()))
    }

    /// Flush what the workers hold (or, with `end`, finish the frame) and
    /// write it all out.
    fn poll_out(&mut self, cx: &mut Context<'_>, end: bool) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_drain(cx))?;
            if self.finished {
                return Poll::Ready(Ok(()));
            }
            let mut out = OutBuffer::around(&mut self.buf[..]);
            let left = if end {
                self.enc.finish(&mut out, true)?
            } else {
                self.enc.flush(&mut out)?
            };
            self.len = out.pos();
            if left == 0 {
                if end {
                    self.finished = true;
                } else if self.len == 0 {
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    /// Once a period: one level up if the link held us up and is slow; one
    /// down if we held the link up, or if the link is fast and not holding
    /// us up (the CPU saved goes to ssh and the daemons, which share it);
    /// straight to the lowest level if we held the link up nearly always.
    fn adapt(&mut self) {
        let elapsed = self.since.elapsed();
        if !self.adapting || elapsed < PERIOD {
            return;
        }
        if self.written == 0 && self.blocked.is_zero() {
            // Nothing to write all period: waiting for input says nothing
            // about the link.
            self.since = Instant::now();
            return;
        }
        let secs = elapsed.as_secs_f64();
        let held = self.blocked.as_secs_f64() / secs;
        let rate = self.written as f64 / secs;
        let next = if held > 0.5 && rate < SLOW_LINK {
            self.level + 1
        } else if held < FAR_BEHIND {
            MIN_LEVEL
        } else if held < 0.2
            || (rate >= FAST_LINK && held <= 0.5)
            || (rate >= SLOW_LINK && self.level > START_LEVEL)
        {
            self.level - 1
        } else {
            self.level
        }
        .clamp(MIN_LEVEL, MAX_LEVEL);
        if next != self.level
            && self
                .enc
                .set_parameter(CParameter::CompressionLevel(next))
                .is_ok()
        {
            tracing::debug!(
                "zstd level {} → {next} (link held writes {:.0}% of the time, took {:.1} MB/s)",
                self.level,
                held * 100.0,
                rate / 1e6
            );
            self.level = next;
        }
        self.since = Instant::now();
        self.blocked = Duration::ZERO;
        self.written = 0;
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for AdaptiveZstd<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        this.adapt();
        loop {
            let mut input = InBuffer::around(data);
            let mut out = OutBuffer::around(&mut this.buf[..]);
            // Blocks while the workers are all busy: the CPU is the limit then.
            this.enc.run(&mut input, &mut out)?;
            this.len = out.pos();
            let n = input.pos();
            if n > 0 || data.is_empty() {
                return Poll::Ready(Ok(n));
            }
            ready!(this.poll_drain(cx))?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_out(cx, false))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_out(cx, true))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn round_trips_through_a_slow_reader() {
        let data: Vec<u8> = (0..3_000_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let (near, mut far) = tokio::io::duplex(4096);
        let input = data.clone();
        let writer = tokio::spawn(async move {
            let mut z = AdaptiveZstd::new(near).unwrap();
            for c in input.chunks(70_000) {
                z.write_all(c).await.unwrap();
            }
            z.shutdown().await.unwrap();
        });
        let mut compressed = Vec::new();
        far.read_to_end(&mut compressed).await.unwrap();
        writer.await.unwrap();
        assert!(compressed.len() < data.len() / 4);
        let back = zstd::stream::decode_all(&compressed[..]).unwrap();
        assert_eq!(back, data);
    }
}
