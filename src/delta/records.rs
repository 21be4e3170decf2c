//! What travels inside the (zstd-compressed) delta stream:
//!
//! ```text
//! 'C' len:u64 bytes          the image config (its sha256 is the image ID)
//! 'L' diffID:[u8;32] len:u64 bytes   one layer's uncompressed tar
//! 'P' diffID:[u8;32] len:u64 offset:u64 bytes
//!                            the same layer, minus the first `offset` bytes,
//!                            which the far side holds in its resume spool
//! 'B' diffID:[u8;32] blob:[u8;32] len:u64 offset:u64 bytes
//!                            one layer as the compressed blob the source's
//!                            store holds (the one its manifest names),
//!                            minus the first `offset` bytes (0: whole)
//! 'S' count:u32 (diffID:[u8;32] len:u64)*count
//!                            the tar length of layers the far side holds,
//!                            sent only when it asks (its load names them)
//! 'E'                        end
//! ```

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Image configs are small; this bounds what a peer can make us buffer.
pub const MAX_CONFIG: u64 = 16 << 20;

/// Entries in a sizes record, at most (no image has more layers).
pub const MAX_SIZES: u32 = 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    Config {
        len: u64,
    },
    Layer {
        diff_id: String,
        len: u64,
    },
    Resume {
        diff_id: String,
        len: u64,
        offset: u64,
    },
    /// A compressed blob of the layer `diff_id`, `len` bytes in all; the
    /// last `len - offset` follow.
    Blob {
        diff_id: String,
        blob: String,
        len: u64,
        offset: u64,
    },
    /// `count` (diffID, length) pairs follow; read them with [`read_sizes`].
    Sizes {
        count: u32,
    },
    End,
}

pub async fn write_config<W: AsyncWrite + Unpin>(w: &mut W, config: &[u8]) -> io::Result<()> {
    w.write_u8(b'C').await?;
    w.write_u64(config.len() as u64).await?;
    w.write_all(config).await
}

/// Read a config record's `len` bytes (`read_header` bounds `len` by
/// [`MAX_CONFIG`]) and check they hash to `expected`.
pub async fn read_config<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u64,
    expected: &str,
) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    let mut c = vec![0u8; len as usize];
    r.read_exact(&mut c)
        .await
        .context("reading the image config")?;
    let d = crate::engine::oci::sha256(&c);
    if d != expected {
        anyhow::bail!("integrity: the config received hashes to {d}, expected {expected}");
    }
    Ok(c)
}

/// Write a layer's header; its `len` bytes must follow.
pub async fn write_layer_header<W: AsyncWrite + Unpin>(
    w: &mut W,
    diff_id: &str,
    len: u64,
) -> io::Result<()> {
    let raw = digest_bytes(diff_id)?;
    w.write_u8(b'L').await?;
    w.write_all(&raw).await?;
    w.write_u64(len).await
}

/// Write a resumed layer's header; its `len - offset` last bytes must follow.
pub async fn write_resume_header<W: AsyncWrite + Unpin>(
    w: &mut W,
    diff_id: &str,
    len: u64,
    offset: u64,
) -> io::Result<()> {
    let raw = digest_bytes(diff_id)?;
    w.write_u8(b'P').await?;
    w.write_all(&raw).await?;
    w.write_u64(len).await?;
    w.write_u64(offset).await
}

/// Write a compressed blob's header; its `len - offset` last bytes must
/// follow.
pub async fn write_blob_header<W: AsyncWrite + Unpin>(
    w: &mut W,
    diff_id: &str,
    blob: &str,
    len: u64,
    offset: u64,
) -> io::Result<()> {
    w.write_u8(b'B').await?;
    w.write_all(&digest_bytes(diff_id)?).await?;
    w.write_all(&digest_bytes(blob)?).await?;
    w.write_u64(len).await?;
    w.write_u64(offset).await
}

fn digest_bytes(diff_id: &str) -> io::Result<Vec<u8>> {
    let hex = diff_id.strip_prefix("sha256:").unwrap_or(diff_id);
    hex::decode(hex).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// The tar lengths of held layers.
pub async fn write_sizes<W: AsyncWrite + Unpin>(
    w: &mut W,
    sizes: &[(String, u64)],
) -> io::Result<()> {
    w.write_u8(b'S').await?;
    w.write_u32(sizes.len() as u32).await?;
    for (d, len) in sizes {
        w.write_all(&digest_bytes(d)?).await?;
        w.write_u64(*len).await?;
    }
    Ok(())
}

/// The body of a sizes record.
pub async fn read_sizes<R: AsyncRead + Unpin>(
    r: &mut R,
    count: u32,
) -> io::Result<Vec<(String, u64)>> {
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut raw = [0u8; 32];
        r.read_exact(&mut raw).await?;
        out.push((format!("sha256:{}", hex::encode(raw)), r.read_u64().await?));
    }
    Ok(out)
}

pub async fn write_end<W: AsyncWrite + Unpin>(w: &mut W) -> io::Result<()> {
    w.write_u8(b'E').await
}

/// Read the next record header (the body is the caller's to read).
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Record> {
    match r.read_u8().await? {
        b'C' => {
            let len = r.read_u64().await?;
            if len > MAX_CONFIG {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("config of {len} bytes"),
                ));
            }
            Ok(Record::Config { len })
        }
        b'L' => {
            let mut raw = [0u8; 32];
            r.read_exact(&mut raw).await?;
            let len = r.read_u64().await?;
            Ok(Record::Layer {
                diff_id: format!("sha256:{}", hex::encode(raw)),
                len,
            })
        }
        b'P' => {
            let mut raw = [0u8; 32];
            r.read_exact(&mut raw).await?;
            let len = r.read_u64().await?;
            let offset = r.read_u64().await?;
            if offset > len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a layer resumed at {offset} of {len} bytes"),
                ));
            }
            Ok(Record::Resume {
                diff_id: format!("sha256:{}", hex::encode(raw)),
                len,
                offset,
            })
        }
        b'B' => {
            let diff_id = read_digest(r).await?;
            let blob = read_digest(r).await?;
            let len = r.read_u64().await?;
            let offset = r.read_u64().await?;
            if offset > len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a blob resumed at {offset} of {len} bytes"),
                ));
            }
            Ok(Record::Blob {
                diff_id,
                blob,
                len,
                offset,
            })
        }
        b'S' => {
            let count = r.read_u32().await?;
            if count > MAX_SIZES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("sizes of {count} layers"),
                ));
            }
            Ok(Record::Sizes { count })
        }
        b'E' => Ok(Record::End),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown record type {other:#04x}"),
        )),
    }
}

async fn read_digest<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<String> {
    let mut raw = [0u8; 32];
    r.read_exact(&mut raw).await?;
    Ok(format!("sha256:{}", hex::encode(raw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn roundtrip_and_bad_input() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let mut buf = Vec::new();
        write_config(&mut buf, b"{}").await.unwrap();
        write_layer_header(&mut buf, &d, 5).await.unwrap();
        buf.extend_from_slice(b"12345");
        write_end(&mut buf).await.unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_header(&mut r).await.unwrap(),
            Record::Config { len: 2 }
        );
        let mut c = [0u8; 2];
        r.read_exact(&mut c).await.unwrap();
        assert_eq!(
            read_header(&mut r).await.unwrap(),
            Record::Layer {
                diff_id: d.clone(),
                len: 5
            }
        );
        let mut l = [0u8; 5];
        r.read_exact(&mut l).await.unwrap();
        assert_eq!(read_header(&mut r).await.unwrap(), Record::End);
        assert!(read_header(&mut r).await.is_err());

        let mut buf = Vec::new();
        write_resume_header(&mut buf, &d, 10, 4).await.unwrap();
        write_end(&mut buf).await.unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_header(&mut r).await.unwrap(),
            Record::Resume {
                diff_id: d.clone(),
                len: 10,
                offset: 4
            }
        );
        assert_eq!(read_header(&mut r).await.unwrap(), Record::End);
        let mut past = Vec::new();
        write_resume_header(&mut past, &d, 4, 10).await.unwrap();
        assert!(read_header(&mut &past[..]).await.is_err());
        assert!(read_header(&mut r).await.is_err());
        assert!(read_header(&mut &b"Z"[..]).await.is_err());
        let mut sizes = Vec::new();
        write_sizes(&mut sizes, &[(d.clone(), 7)]).await.unwrap();
        let mut r = &sizes[..];
        assert_eq!(
            read_header(&mut r).await.unwrap(),
            Record::Sizes { count: 1 }
        );
        assert_eq!(read_sizes(&mut r, 1).await.unwrap(), vec![(d.clone(), 7)]);
        let mut many = vec![b'S'];
        many.extend_from_slice(&(MAX_SIZES + 1).to_be_bytes());
        assert!(read_header(&mut &many[..]).await.is_err());
        let b = format!("sha256:{}", "cd".repeat(32));
        let mut blob = Vec::new();
        write_blob_header(&mut blob, &d, &b, 9, 2).await.unwrap();
        let want = Record::Blob {
            diff_id: d.clone(),
            blob: b.clone(),
            len: 9,
            offset: 2,
        };
        assert_eq!(read_header(&mut &blob[..]).await.unwrap(), want);
        let mut past = Vec::new();
        write_blob_header(&mut past, &d, &b, 2, 9).await.unwrap();
        assert!(read_header(&mut &past[..]).await.is_err());
        let mut big = vec![b'C'];
        big.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(read_header(&mut &big[..]).await.is_err());
    }
}
