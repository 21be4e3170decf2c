//! Just enough tar to read `docker save` as it streams and to write a
//! `docker load` archive, without holding an entry in memory.
//!
//! Reading understands ustar/GNU headers, GNU long names (`L`) and PAX
//! extended headers (`x`, for `path` and `size`); anything else is passed
//! over. Every length comes from the input, so each is bounded before use.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

const BLOCK: usize = 512;
/// Long names and PAX headers are small; refuse anything absurd.
const MAX_META: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub size: u64,
    /// `b'0'` (or 0) regular file, `b'5'` directory, `b'2'` symlink, …
    pub kind: u8,
}

impl Entry {
    pub fn is_file(&self) -> bool {
        self.kind == b'0' || self.kind == 0
    }
}

pub struct TarReader<R> {
    r: R,
    /// Bytes of the current entry not yet read.
    left: u64,
    /// Padding after the current entry.
    pad: u64,
}

impl<R: AsyncRead + Unpin> TarReader<R> {
    pub fn new(r: R) -> Self {
        TarReader { r, left: 0, pad: 0 }
    }

    /// The next entry's header, skipping what is left of the current one.
    /// `None` at the end of the archive.
    pub async fn next(&mut self) -> io::Result<Option<Entry>> {
        self.skip_rest().await?;
        let mut long_name: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            let mut h = [0u8; BLOCK];
            if !self.read_block(&mut h).await? {
                return Ok(None);
            }
            if h.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            let header = tar::Header::from_byte_slice(&h);
            let size = header.entry_size().map_err(invalid)?;
            let kind = h[156];
            match kind {
                b'L' | b'x' | b'g' => {
                    if size > MAX_META {
                        return Err(invalid(format!("tar metadata entry of {size} bytes")));
                    }
                    let mut meta = vec![0u8; size as usize];
                    self.r.read_exact(&mut meta).await?;
                    self.discard(padding(size)).await?;
                    if kind == b'L' {
                        let end = meta.iter().position(|&b| b == 0).unwrap_or(meta.len());
                        long_name = Some(String::from_utf8_lossy(&meta[..end]).into_owned());
                    } else if kind == b'x' {
                        for (k, v) in pax_records(&meta) {
                            match k.as_str() {
                                "path" => long_name = Some(v),
                                "size" => pax_size = v.parse().ok(),
                                _ => {}
                            }
                        }
                    }
                    continue;
                }
                _ => {}
            }
            let path = match long_name.take() {
                Some(p) => p,
                None => {
                    let name = String::from_utf8_lossy(&header.path_bytes()).into_owned();
                    name
                }
            };
            let size = pax_size.take().unwrap_or(size);
            // Only regular files carry data (hard links and symlinks don't).
            let data = if kind == b'0' || kind == 0 || kind == b'7' {
                size
            } else {
                0
            };
            self.left = data;
            self.pad = padding(data);
            return Ok(Some(Entry {
                path: path.trim_start_matches("./").to_string(),
                size: data,
                kind,
            }));
        }
    }

    /// Read from the current entry; 0 at its end.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = self.r.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive ended inside an entry",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }

    /// Read the whole current entry, refusing more than `max` bytes.
    pub async fn read_all(&mut self, max: u64) -> io::Result<Vec<u8>> {
        if self.left > max {
            return Err(invalid(format!(
                "entry of {} bytes exceeds {max}",
                self.left
            )));
        }
        let mut v = vec![0u8; self.left as usize];
        self.r.read_exact(&mut v).await?;
        self.left = 0;
        Ok(v)
    }

    async fn skip_rest(&mut self) -> io::Result<()> {
        let n = self.left + self.pad;
        self.left = 0;
        self.pad = 0;
        self.discard(n).await
    }

    async fn discard(&mut self, n: u64) -> io::Result<()> {
        let copied = tokio::io::copy(&mut (&mut self.r).take(n), &mut tokio::io::sink()).await?;
        if copied != n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive ended early",
            ));
        }
        Ok(())
    }

    /// A whole block, or `false` at a clean end of input.
    async fn read_block(&mut self, h: &mut [u8; BLOCK]) -> io::Result<bool> {
        let mut got = 0;
        while got < BLOCK {
            let n = self.r.read(&mut h[got..]).await?;
            if n == 0 {
                return if got == 0 {
                    Ok(false)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "archive ended inside a header",
                    ))
                };
            }
            got += n;
        }
        Ok(true)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// PAX records: "<len> <key>=<value>\n" repeated.
fn pax_records(meta: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(meta);
    text.lines()
        .filter_map(|l| {
            let (_, kv) = l.split_once(' ')?;
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The header block of a regular file of `size` bytes at `path`.
/// A whole file as archive chunks: its header, its bytes, its padding.
pub fn file_chunks(path: &str, body: Vec<u8>) -> io::Result<[bytes::Bytes; 3]> {
    let len = body.len() as u64;
    Ok([
        bytes::Bytes::copy_from_slice(&file_header(path, len)?),
        bytes::Bytes::from(body),
        bytes::Bytes::from(pad_for(len)),
    ])
}

pub fn file_header(path: &str, size: u64) -> io::Result<[u8; BLOCK]> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mtime(0);
    h.set_cksum();
    let mut out = [0u8; BLOCK];
    out.copy_from_slice(h.as_bytes());
    Ok(out)
}

/// Zeros after an entry of `size` bytes.
pub fn pad_for(size: u64) -> Vec<u8> {
    vec![0u8; padding(size) as usize]
}

/// The end-of-archive marker: two zero blocks.
pub fn trailer() -> [u8; 2 * BLOCK] {
    [0u8; 2 * BLOCK]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, d) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, p, *d).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[tokio::test]
    async fn reads_entries_long_names_and_skips_unread_data() {
        let long = format!("{}/layer.tar", "a".repeat(120));
        let data = archive(&[
            ("x/json", b"{}"),
            (&long, &[7u8; 1000]),
            ("manifest.json", b"[]"),
        ]);
        let mut r = TarReader::new(&data[..]);
        let e = r.next().await.unwrap().unwrap();
        assert_eq!((e.path.as_str(), e.size), ("x/json", 2));
        assert_eq!(r.read_all(10).await.unwrap(), b"{}");
        let e = r.next().await.unwrap().unwrap();
        assert_eq!((e.path.as_str(), e.size), (long.as_str(), 1000));
        // Not reading it: next() skips the data and padding.
        let e = r.next().await.unwrap().unwrap();
        assert_eq!(e.path, "manifest.json");
        assert_eq!(r.read_all(10).await.unwrap(), b"[]");
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn written_headers_read_back() {
        let mut a = Vec::new();
        a.extend_from_slice(&file_header("abc/layer.tar", 3).unwrap());
        a.extend_from_slice(b"xyz");
        a.extend(pad_for(3));
        a.extend_from_slice(&trailer());
        let mut r = TarReader::new(&a[..]);
        let e = r.next().await.unwrap().unwrap();
        assert_eq!(
            (e.path.as_str(), e.size, e.is_file()),
            ("abc/layer.tar", 3, true)
        );
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).await.unwrap(), 3);
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn truncated_and_garbage_input_are_errors_not_panics() {
        let data = archive(&[("x", &[1u8; 600])]);
        for cut in [100, 512, 700] {
            let mut r = TarReader::new(&data[..cut]);
            let res = async {
                while r.next().await?.is_some() {}
                Ok::<_, io::Error>(())
            }
            .await;
            assert!(res.is_err(), "cut at {cut}");
        }
        let junk = vec![0xffu8; 2048];
        let mut r = TarReader::new(&junk[..]);
        let _ = r.next().await; // any result but a panic
    }
}
