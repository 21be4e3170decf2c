//! Compressed layer blobs (gzip or zstd, as Docker's containerd store keeps
//! them) back to their tars, decoded as the blob's bytes are written in, so
//! a layer is checked against its diffID without being held anywhere.
//!
//! flate2 and zstd both offer decoders that are written to; the blob's
//! bytes arrive in chunks (from an export or off the wire), which a
//! write-side decoder takes as they come.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

use crate::engine::Compression;

/// Largest zstd window a peer's blob may use: 2^27 (128 MiB) is zstd's own
/// default bound; 2^25 (32 MiB) is four times what containerd's and
/// BuildKit's zstd writers use at their default levels.
const PEER_WINDOW_LOG: u32 = 25;

/// A decoder writing the tar into `W`.
pub enum Unpack<W: Write> {
    Gzip(flate2::write::MultiGzDecoder<W>),
    Zstd(zstd::stream::write::Decoder<'static, W>),
}

impl<W: Write> Unpack<W> {
    /// A decoder for a blob of this machine's own store.
    pub fn new(compression: Compression, sink: W) -> io::Result<Unpack<W>> {
        Ok(match compression {
            Compression::Gzip => Unpack::Gzip(flate2::write::MultiGzDecoder::new(sink)),
            Compression::Zstd => Unpack::Zstd(zstd::stream::write::Decoder::new(sink)?),
        })
    }

    /// A decoder for a blob a peer sent: its zstd window is bounded.
    pub fn for_peer(compression: Compression, sink: W) -> io::Result<Unpack<W>> {
        let mut u = Unpack::new(compression, sink)?;
        if let Unpack::Zstd(d) = &mut u {
            d.window_log_max(PEER_WINDOW_LOG)?;
        }
        Ok(u)
    }

    pub fn write(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Unpack::Gzip(d) => d.write_all(b),
            Unpack::Zstd(d) => d.write_all(b),
        }
    }

    /// The blob has ended: the sink, with every byte of the tar in it. A
    /// blob cut short is an error.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Unpack::Gzip(d) => d.finish(),
            Unpack::Zstd(mut d) => {
                d.flush()?;
                Ok(d.into_inner())
            }
        }
    }
}

/// Hashes and counts what is written, and passes it on.
pub struct Hashing<W> {
    pub inner: W,
    hasher: Sha256,
    pub len: u64,
}

impl<W> Hashing<W> {
    pub fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// `sha256:…` of everything written.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hasher.update(&b[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpack(c: Compression, blob: &[u8], chunk: usize) -> io::Result<Hashing<io::Sink>> {
        let mut u = Unpack::for_peer(c, Hashing::new(io::sink()))?;
        for part in blob.chunks(chunk) {
            u.write(part)?;
        }
        u.finish()
    }

    #[test]
    fn blobs_unpack_in_any_chunks_and_short_ones_fail() {
        let tar: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let want = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::bulk::compress(&tar, 3).unwrap();
        for (c, blob) in [(Compression::Gzip, &gz), (Compression::Zstd, &zst)] {
            for chunk in [1, 4096, blob.len()] {
                let h = unpack(c, blob, chunk).unwrap();
                assert_eq!((h.digest(), h.len), (want.clone(), tar.len() as u64));
            }
            let cut = unpack(c, &blob[..blob.len() - 8], 4096);
            assert!(
                cut.is_err() || cut.unwrap().digest() != want,
                "{c:?}: a blob cut short unpacks to the whole tar"
            );
        }
    }
}
