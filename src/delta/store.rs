//! Layers read straight out of the local daemon's classic store, when this
//! process can read it (as root, on the daemon's machine).
//!
//! `docker save` writes the whole image into a temp directory before its
//! first byte comes out (about a second per 200 MB here, the daemon busy
//! all along), and lists the layers in no useful order. The daemon itself
//! exports a layer by replaying the record it kept when it registered the
//! layer ("tar-split": every header and padding byte of the original tar,
//! and the name and size of each file) against the files of the layer's own
//! directory. Doing the same here gives the identical tar, at once, in chain
//! order, without the daemon's help.
//!
//! Layout (overlay2; Docker 20.10 and later, classic store):
//!
//! ```text
//! <root>/image/overlay2/imagedb/content/sha256/<image ID>   the config
//! <root>/image/overlay2/layerdb/sha256/<chainID>/diff       the diffID
//!                                              /cache-id   its directory's name
//!                                              /tar-split.json.gz
//! <root>/overlay2/<cache-id>/diff/...                       the layer's files
//! ```
//!
//! Nothing found there is taken on trust: the config must hash to the image
//! ID, each layer's `diff` must name the diffID the image lists, a file is
//! opened beneath its layer's directory without following any symlink, and
//! the far side checks every layer against its diffID before loading it.
//! Anything unexpected before a layer's first byte is sent makes the sender
//! read the rest with `docker save` instead. `DOS_READ_STORE=never` turns
//! this source off.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncBufRead;
use tokio::sync::mpsc;

use super::chain::chain_ids;
use crate::docker::Daemon;

const CHUNK: usize = 128 * 1024;
/// The only graph driver whose layout this reads.
const DRIVER: &str = "overlay2";

/// The image's config and layers, as the local daemon stores them.
pub struct LocalStore {
    config: Vec<u8>,
    layers: Vec<Layer>,
}

/// One layer: its tar-split record and its directory.
#[derive(Clone, Debug)]
pub struct Layer {
    pub diff_id: String,
    split: PathBuf,
    dir: PathBuf,
}

/// May a daemon's store be read directly (`DOS_READ_STORE`: `auto`, the
/// default, or `never`)? Also asked for the containerd content store.
pub fn allowed() -> bool {
    crate::settings::read_store()
}

impl LocalStore {
    /// The store holding this image, if this process can read it. `None`
    /// (with the reason at debug level) whenever it can't: another driver,
    /// another machine, no permission, or anything not as expected.
    pub async fn open(daemon: &Daemon, image_id: &str, diff_ids: &[String]) -> Option<LocalStore> {
        if !allowed() || !crate::capture::on_this_host(&daemon.host) {
            return None;
        }
        let info = daemon.api.info().await.ok()?;
        let (root, driver) = (info.docker_root_dir?, info.driver?);
        if driver != DRIVER {
            tracing::debug!("not reading the daemon's store: driver {driver}");
            return None;
        }
        let (image_id, diff_ids) = (image_id.to_string(), diff_ids.to_vec());
        let found = tokio::task::spawn_blocking(move || {
            LocalStore::locate(Path::new(&root), &image_id, &diff_ids)
        })
        .await;
        match found {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!("not reading the daemon's store: {e}");
                None
            }
            Err(_) => None,
        }
    }

    /// Find and check the config and every layer under `root`.
    pub fn locate(root: &Path, image_id: &str, diff_ids: &[String]) -> io::Result<LocalStore> {
        let image = root.join("image").join(DRIVER);
        let hex = digest_hex(image_id)?;
        let config = std::fs::read(image.join("imagedb/content/sha256").join(hex))?;
        if format!("sha256:{}", hex::encode(Sha256::digest(&config))) != image_id {
            return Err(invalid("the stored config does not hash to the image ID"));
        }
        let mut layers = Vec::with_capacity(diff_ids.len());
        for (diff_id, chain) in diff_ids.iter().zip(chain_ids(diff_ids)) {
            let db = image.join("layerdb/sha256").join(digest_hex(&chain)?);
            if std::fs::read_to_string(db.join("diff"))?.trim() != diff_id {
                return Err(invalid(format!(
                    "layer {chain} is stored with another diffID"
                )));
            }
            let cache_id = std::fs::read_to_string(db.join("cache-id"))?;
            let cache_id = cache_id.trim();
            if cache_id.is_empty() || !cache_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(invalid(format!("layer {chain} has cache-id {cache_id:?}")));
            }
            let layer = Layer {
                diff_id: diff_id.clone(),
                split: db.join("tar-split.json.gz"),
                dir: root.join(DRIVER).join(cache_id).join("diff"),
            };
            if !layer.split.is_file() || !layer.dir.is_dir() {
                return Err(invalid(format!(
                    "layer {chain}: no tar-split record or directory"
                )));
            }
            layers.push(layer);
        }
        Ok(LocalStore { config, layers })
    }

    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// The image's layers, bottom first.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }
}

impl Layer {
    /// The tar's length, having checked that every file the record names is
    /// a regular file of the recorded size beneath the layer's directory
    /// ([`Layer::measure`], in a blocking thread). Afterwards
    /// [`Layer::reader`] can only fail if the store changes under it.
    pub async fn tar_len(&self) -> io::Result<u64> {
        let layer = self.clone();
        tokio::task::spawn_blocking(move || layer.measure())
            .await
            .map_err(io::Error::other)?
    }

    /// [`Layer::tar_len`], blocking.
    fn measure(&self) -> io::Result<u64> {
        let dir = open_dir(&self.dir)?;
        let mut len = 0u64;
        for entry in entries(&self.split)? {
            match entry? {
                Entry::Segment(bytes) => len += bytes.len() as u64,
                Entry::File { name, size } if size > 0 => {
                    let meta = open_beneath(&dir, &name)?.metadata()?;
                    if !meta.is_file() || meta.len() != size {
                        return Err(invalid(format!(
                            "{} is not a file of {size} bytes",
                            String::from_utf8_lossy(&name)
                        )));
                    }
                    len += size;
                }
                Entry::File { .. } => {}
            }
        }
        Ok(len)
    }

    /// The layer's tar from byte `skip` on, rebuilt in a blocking thread.
    pub fn reader(&self, skip: u64) -> impl AsyncBufRead + Send + Unpin + 'static {
        let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(4);
        let layer = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Out {
                tx,
                buf: Vec::with_capacity(CHUNK),
                skip,
            };
            if let Err(e) = layer.rebuild(&mut out).and_then(|()| out.flush()) {
                let _ = out.tx.blocking_send(Err(e));
            }
        });
        tokio_util::io::StreamReader::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    fn rebuild(&self, out: &mut Out) -> io::Result<()> {
        let dir = open_dir(&self.dir)?;
        let mut scratch = vec![0u8; CHUNK];
        for entry in entries(&self.split)? {
            match entry? {
                Entry::Segment(bytes) => out.put(&bytes)?,
                Entry::File { name, size } if size > 0 => {
                    let mut f = open_beneath(&dir, &name)?;
                    let mut left = size;
                    while left > 0 {
                        let want = scratch.len().min(left as usize);
                        let n = f.read(&mut scratch[..want])?;
                        if n == 0 {
                            return Err(invalid(format!(
                                "{} ended {left} bytes short",
                                String::from_utf8_lossy(&name)
                            )));
                        }
                        out.put(&scratch[..n])?;
                        left -= n as u64;
                    }
                }
                Entry::File { .. } => {}
            }
        }
        Ok(())
    }
}

/// Where rebuilt bytes go: dropped while `skip` lasts, then handed on in
/// chunks of about [`CHUNK`].
struct Out {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    skip: u64,
}

impl Out {
    fn put(&mut self, mut data: &[u8]) -> io::Result<()> {
        let drop = self.skip.min(data.len() as u64) as usize;
        self.skip -= drop as u64;
        data = &data[drop..];
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the layer's reader is gone"))
    }
}

/// One line of a tar-split record.
enum Entry {
    /// Bytes of the tar as they were (headers, padding, the end blocks).
    Segment(Vec<u8>),
    /// A file's contents: `size` bytes of the file at `name`.
    File { name: Vec<u8>, size: u64 },
}

/// The record's JSON lines (Go's `[]byte` fields are base64).
#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    name_raw: Option<String>,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    payload: Option<String>,
}

fn entries(split: &Path) -> io::Result<impl Iterator<Item = io::Result<Entry>>> {
    let gz = flate2::read::GzDecoder::new(File::open(split)?);
    let lines = serde_json::Deserializer::from_reader(BufReader::with_capacity(CHUNK, gz))
        .into_iter::<Line>();
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(lines.map(move |line| {
        let line = line.map_err(|e| invalid(format!("tar-split record: {e}")))?;
        let decode = |s: &str| {
            b64.decode(s)
                .map_err(|e| invalid(format!("tar-split: {e}")))
        };
        match line.kind {
            1 => Ok(Entry::File {
                name: match (&line.name_raw, line.name) {
                    (Some(raw), _) => decode(raw)?,
                    (None, Some(n)) => n.into_bytes(),
                    (None, None) => return Err(invalid("tar-split: a file without a name")),
                },
                size: line.size,
            }),
            2 => Ok(Entry::Segment(match &line.payload {
                Some(p) => decode(p)?,
                None => Vec::new(),
            })),
            k => Err(invalid(format!("tar-split: entry type {k}"))),
        }
    }))
}

fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    Ok(File::open(dir)?.into())
}

/// Open `name` (relative, as in the tar) for reading beneath `dir`, with
/// no `..`, no absolute path and no symlink anywhere on the way: a layer
/// could hold a symlink to a host directory, and a file "under" it in its
/// record; the daemon never wrote such a file inside the layer, so there is
/// nothing to read there.
fn open_beneath(dir: &OwnedFd, name: &[u8]) -> io::Result<File> {
    let parts: Vec<&[u8]> = name
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    if parts.is_empty() || parts.contains(&&b".."[..]) {
        return Err(invalid(format!(
            "file name {:?} in the tar-split record",
            String::from_utf8_lossy(name)
        )));
    }
    let path = CString::new(parts.join(&b'/')).map_err(|_| invalid("a file name with NUL"))?;
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `path` is NUL-terminated and `how` a valid open_how of the
    // size passed; the kernel returns a new descriptor we then own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "opening {} in the layer: {e}",
                Path::new(std::ffi::OsStr::from_bytes(&path.into_bytes())).display()
            ),
        ));
    }
    // SAFETY: a descriptor just returned by openat2, owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

fn digest_hex(d: &str) -> io::Result<&str> {
    d.strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| invalid(format!("{d:?} is not a sha256 digest")))
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// A store on disk, as the daemon would leave it, for tests here and in
/// [`super::send`].
#[cfg(test)]
pub(crate) mod fixture {
    use super::*;
    use std::io::Write;

    use crate::tarstream;

    /// A tar of `files`, and the tar-split record the daemon would keep
    /// for it.
    pub fn tar_and_split(files: &[(&str, &[u8])]) -> (Vec<u8>, Vec<u8>) {
        let b64 = base64::engine::general_purpose::STANDARD;
        let (mut tar, mut lines) = (Vec::new(), String::new());
        let mut pending = Vec::new();
        let segment = |bytes: &[u8], lines: &mut String| {
            lines.push_str(&format!(
                "{{\"type\":2,\"payload\":\"{}\"}}\n",
                b64.encode(bytes)
            ));
        };
        for (name, data) in files {
            pending.extend_from_slice(&tarstream::file_header(name, data.len() as u64).unwrap());
            segment(&pending, &mut lines);
            tar.extend_from_slice(&pending);
            pending.clear();
            lines.push_str(&format!(
                "{{\"type\":1,\"name\":\"{name}\",\"size\":{},\"payload\":null}}\n",
                data.len()
            ));
            tar.extend_from_slice(data);
            pending.extend(tarstream::pad_for(data.len() as u64));
        }
        pending.extend_from_slice(&tarstream::trailer());
        segment(&pending, &mut lines);
        tar.extend_from_slice(&pending);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(lines.as_bytes()).unwrap();
        (tar, gz.finish().unwrap())
    }

    /// A store under `root` holding a one-layer image made of `files`
    /// (written into the layer's directory as `on_disk` says).
    pub fn store(
        root: &Path,
        files: &[(&str, &[u8])],
        on_disk: &[(&str, &[u8])],
    ) -> (String, Vec<u8>) {
        let (tar, split) = tar_and_split(files);
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let config = format!("{{\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"{diff_id}\"]}}}}");
        let image_id = format!("sha256:{}", hex::encode(Sha256::digest(config.as_bytes())));
        let image = root.join("image/overlay2");
        let content = image.join("imagedb/content/sha256");
        std::fs::create_dir_all(&content).unwrap();
        std::fs::write(content.join(&image_id[7..]), &config).unwrap();
        let db = image.join("layerdb/sha256").join(&diff_id[7..]);
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(db.join("diff"), &diff_id).unwrap();
        std::fs::write(db.join("cache-id"), "abc123\n").unwrap();
        std::fs::write(db.join("tar-split.json.gz"), split).unwrap();
        let dir = root.join("overlay2/abc123/diff");
        for (name, data) in on_disk {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        (image_id, tar)
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::store;
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn read_all(layer: &Layer, skip: u64) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        layer.reader(skip).read_to_end(&mut v).await?;
        Ok(v)
    }

    #[tokio::test]
    async fn rebuilds_the_exact_tar_and_resumes_mid_file() {
        let root = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let files: &[(&str, &[u8])] = &[("a/one", b"hello"), ("empty", b""), ("a/b/big", &big)];
        let (image_id, tar) = store(root.path(), files, files);
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let s = LocalStore::locate(root.path(), &image_id, std::slice::from_ref(&diff_id)).unwrap();
        let layer = &s.layers()[0];
        assert_eq!(layer.measure().unwrap(), tar.len() as u64);
        assert_eq!(read_all(layer, 0).await.unwrap(), tar);
        assert_eq!(read_all(layer, 1000).await.unwrap(), &tar[1000..]);
    }

    #[tokio::test]
    async fn a_symlink_out_of_the_layer_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"host data").unwrap();
        let files: &[(&str, &[u8])] = &[("etc/secret", b"host data")];
        let (image_id, tar) = store(root.path(), files, &[]);
        let dir = root.path().join("overlay2/abc123/diff");
        std::os::unix::fs::symlink(outside.path(), dir.join("etc")).unwrap();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let s = LocalStore::locate(root.path(), &image_id, &[diff_id]).unwrap();
        assert!(s.layers()[0].measure().is_err());
        assert!(read_all(&s.layers()[0], 0).await.is_err());
    }

    #[test]
    fn a_store_that_does_not_match_the_image_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let files: &[(&str, &[u8])] = &[("x", b"1")];
        let (image_id, tar) = store(root.path(), files, files);
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let ids = std::slice::from_ref(&diff_id);
        assert!(LocalStore::locate(root.path(), &image_id, ids).is_ok());
        // The layer recorded under that chainID has another diffID.
        let db = root
            .path()
            .join("image/overlay2/layerdb/sha256")
            .join(&diff_id[7..]);
        std::fs::write(db.join("diff"), format!("sha256:{}", "0".repeat(64))).unwrap();
        assert!(LocalStore::locate(root.path(), &image_id, ids).is_err());
        std::fs::write(db.join("diff"), &diff_id).unwrap();
        // The config stored under the image ID is not that image's.
        let content = root.path().join("image/overlay2/imagedb/content/sha256");
        std::fs::write(content.join(&image_id[7..]), b"{}").unwrap();
        assert!(LocalStore::locate(root.path(), &image_id, ids).is_err());
    }

    #[test]
    fn a_changed_file_size_fails_the_measure() {
        let root = tempfile::tempdir().unwrap();
        let (image_id, tar) = store(root.path(), &[("f", b"12345")], &[("f", b"123")]);
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let s = LocalStore::locate(root.path(), &image_id, &[diff_id]).unwrap();
        assert!(s.layers()[0].measure().is_err());
    }
}
