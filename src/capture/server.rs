//! The capture registry's HTTP side: just enough of the distribution API for
//! `docker push`, storing nothing.
//!
//! - Existence checks (HEAD, cross-repository mounts) are answered from what
//!   the daemon pushed here before ([`super::known`]): "present" exactly for
//!   the layers the caller says may be skipped. Until the caller decides
//!   (the far side's inventory is on its way), those answers wait.
//! - Uploads are decompressed and hashed as they stream in; a finished one
//!   is handed over as a [`Captured`] blob: its digest, its diffID, and (if
//!   asked for) its uncompressed bytes in an anonymous temp file.
//! - The manifest tells which blob is which layer; nothing is kept.
//!
//! Every request must carry the per-run credentials, like the embedded
//! registry's.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Seek, Write};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use flate2::write::GzDecoder;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH};
use hyper::{Method, Request, Response, StatusCode};
use rand::RngCore;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, watch};

use super::known::Blob;
use crate::auth::Credentials;
use crate::http::{empty, read_limited, Body};
use crate::registry::path::{self, Digest, Route};
use crate::registry::server::{
    blob_created, error, query_pairs, status, unauthorized, upload_accepted, versioned,
};

/// Largest manifest accepted.
const MAX_MANIFEST: usize = 4 << 20;

/// What the capture registry hands over.
#[derive(Debug)]
pub enum Captured {
    /// A blob pushed in full and checked against its digest.
    Blob {
        digest: String,
        /// sha256 of the uncompressed content: a layer's diffID, or for the
        /// image config (sent uncompressed) the image ID.
        diff_id: String,
        /// Uncompressed length.
        raw: u64,
        /// The uncompressed content, rewound (None unless files are kept).
        file: Option<File>,
    },
    /// The daemon's push ended: None when it succeeded, else why not.
    Ended(Option<String>),
}

pub(super) struct Shared {
    pub creds: Credentials,
    /// Blob digest → (diffID, compressed size), as learned before this run.
    pub known: HashMap<String, (String, u64)>,
    /// The diffIDs the daemon may skip; None until the caller knows.
    pub skip: watch::Receiver<Option<HashSet<String>>>,
    /// Layers to upload without waiting for the decision (likely missing).
    pub eager: HashSet<String>,
    /// Keep uploaded content for the caller (false: hash and discard).
    pub keep_files: bool,
    /// The image's diffIDs, bottom first (to read the manifest).
    pub diff_ids: Vec<String>,
    pub out: mpsc::UnboundedSender<Captured>,
    /// What this run learned: diffID → blob.
    pub learned: Mutex<Vec<(String, Blob)>>,
    uploads: Mutex<HashMap<String, Option<Upload>>>,
    /// Blobs completed in this run (digest → size): the daemon checks each
    /// right after uploading it.
    done: Mutex<HashMap<String, u64>>,
}

impl Shared {
    pub fn new(
        creds: Credentials,
        known: HashMap<String, (String, u64)>,
        skip: watch::Receiver<Option<HashSet<String>>>,
        eager: HashSet<String>,
        keep_files: bool,
        diff_ids: Vec<String>,
        out: mpsc::UnboundedSender<Captured>,
    ) -> Shared {
        Shared {
            creds,
            known,
            skip,
            eager,
            keep_files,
            diff_ids,
            out,
            learned: Mutex::new(Vec::new()),
            uploads: Mutex::new(HashMap::new()),
            done: Mutex::new(HashMap::new()),
        }
    }
}

pub(super) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    versioned(match route(&shared, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("capture registry: {e:#}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                &format!("{e:#}"),
            )
        }
    })
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Result<Response<Body>> {
    if !shared
        .creds
        .matches(req.headers().get(AUTHORIZATION).map(|h| h.as_bytes()))
    {
        return Ok(unauthorized());
    }
    let Some(route) = path::parse(req.uri().path()) else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "NAME_INVALID",
            "not a registry path",
        ));
    };
    let method = req.method().clone();
    let q = query_pairs(req.uri().query().unwrap_or(""));
    match (&method, route) {
        (&Method::GET | &Method::HEAD, Route::Base) => Ok(status(StatusCode::OK)),
        (&Method::HEAD, Route::Blob { name, digest }) => Ok(match present(shared, &digest).await {
            Some(size) => Response::builder()
                .status(StatusCode::OK)
                .header(CONTENT_LENGTH, size)
                .header("Docker-Content-Digest", digest.as_str())
                .header("Location", format!("/v2/{name}/blobs/{digest}"))
                .body(empty())?,
            None => blob_unknown(),
        }),
        (&Method::POST, Route::UploadStart { name }) => {
            if let Some(d) = q.get("mount").and_then(|m| Digest::parse(m)) {
                if present(shared, &d).await.is_some() {
                    return Ok(blob_created(&name, &d));
                }
            }
            let mut raw = [0u8; 16];
            rand::rng().fill_bytes(&mut raw);
            let id = hex::encode(raw);
            let up = Upload::new(shared.keep_files)?;
            shared.uploads.lock().unwrap().insert(id.clone(), Some(up));
            Ok(upload_accepted(StatusCode::ACCEPTED, &name, &id, 0))
        }
        (&Method::PATCH, Route::Upload { name, id }) => {
            let Some(mut up) = take(shared, &id) else {
                return Ok(upload_unknown());
            };
            let fed = up.feed_body(req.into_body()).await;
            let size = up.size;
            put_back(shared, &id, up);
            fed?;
            Ok(upload_accepted(StatusCode::ACCEPTED, &name, &id, size))
        }
        (&Method::PUT, Route::Upload { name, id }) => {
            let Some(expected) = q.get("digest").and_then(|d| Digest::parse(d)) else {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "DIGEST_INVALID",
                    "missing digest",
                ));
            };
            let Some(mut up) = take(shared, &id) else {
                return Ok(upload_unknown());
            };
            shared.uploads.lock().unwrap().remove(&id);
            up.feed_body(req.into_body()).await?;
            let size = up.size;
            let blob = up.finish()?;
            if blob.digest != expected.as_str() {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "DIGEST_INVALID",
                    "uploaded content does not match the digest",
                ));
            }
            shared
                .done
                .lock()
                .unwrap()
                .insert(blob.digest.clone(), size);
            if shared.diff_ids.contains(&blob.diff_id) {
                shared.learned.lock().unwrap().push((
                    blob.diff_id.clone(),
                    Blob {
                        digest: blob.digest.clone(),
                        size,
                        raw: blob.raw,
                    },
                ));
            }
            let _ = shared.out.send(Captured::Blob {
                digest: blob.digest,
                diff_id: blob.diff_id,
                raw: blob.raw,
                file: blob.file,
            });
            Ok(blob_created(&name, &expected))
        }
        (&Method::DELETE, Route::Upload { id, .. }) => {
            shared.uploads.lock().unwrap().remove(&id);
            Ok(status(StatusCode::NO_CONTENT))
        }
        (&Method::PUT, Route::Manifest { name, .. }) => {
            let body = read_limited(req.into_body(), MAX_MANIFEST).await?;
            learn_manifest(shared, &body);
            let d = Digest::from_sha256(&Sha256::digest(&body));
            Ok(Response::builder()
                .status(StatusCode::CREATED)
                .header("Location", format!("/v2/{name}/manifests/{d}"))
                .header("Docker-Content-Digest", d.as_str())
                .header(CONTENT_LENGTH, 0)
                .body(empty())?)
        }
        _ => Ok(error(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "the capture registry only takes pushes",
        )),
    }
}

/// Does the registry "have" this blob? Its size if so. Blobs uploaded in
/// this run are here; a blob learned before is here if its layer may be
/// skipped (waiting for that decision, unless it is one to upload eagerly).
async fn present(shared: &Shared, digest: &Digest) -> Option<u64> {
    if let Some(&size) = shared.done.lock().unwrap().get(digest.as_str()) {
        return Some(size);
    }
    let (diff_id, size) = shared.known.get(digest.as_str())?;
    if shared.eager.contains(diff_id) && shared.skip.borrow().is_none() {
        return None;
    }
    let mut skip = shared.skip.clone();
    let decided = skip.wait_for(|s| s.is_some()).await.ok()?;
    decided
        .as_ref()
        .is_some_and(|s| s.contains(diff_id))
        .then_some(*size)
}

/// The manifest lists the blobs in layer order: learn which digest is which
/// diffID, including layers the daemon skipped.
fn learn_manifest(shared: &Shared, body: &[u8]) {
    let Ok(m) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let Some(layers) = m.get("layers").and_then(|l| l.as_array()) else {
        return;
    };
    if layers.len() != shared.diff_ids.len() {
        return;
    }
    let mut learned = shared.learned.lock().unwrap();
    for (l, diff_id) in layers.iter().zip(&shared.diff_ids) {
        let digest = l
            .get("digest")
            .and_then(|d| d.as_str())
            .and_then(Digest::parse);
        let size = l.get("size").and_then(|s| s.as_u64());
        if let (Some(digest), Some(size)) = (digest, size) {
            learned.push((
                diff_id.clone(),
                Blob {
                    digest: digest.as_str().to_string(),
                    size,
                    raw: 0,
                },
            ));
        }
    }
}

fn take(shared: &Shared, id: &str) -> Option<Upload> {
    shared.uploads.lock().unwrap().get_mut(id)?.take()
}

fn put_back(shared: &Shared, id: &str, up: Upload) {
    if let Some(slot) = shared.uploads.lock().unwrap().get_mut(id) {
        *slot = Some(up);
    }
}

fn blob_unknown() -> Response<Body> {
    // HEAD responses carry no body; the status says it all.
    status(StatusCode::NOT_FOUND)
}

fn upload_unknown() -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
        "upload unknown",
    )
}

/// One upload in progress: the compressed digest, and the content
/// decompressed (gzip, as docker pushes layers; anything else as is),
/// hashed and optionally kept.
struct Upload {
    compressed: Sha256,
    size: u64,
    sink: Sink,
}

enum Sink {
    /// Fewer than two bytes so far: not yet known whether gzip.
    Sniffing(Vec<u8>, Raw),
    Gzip(GzDecoder<Raw>),
    Plain(Raw),
    /// Swapped out while switching.
    Gone,
}

struct Raw {
    hasher: Sha256,
    len: u64,
    file: Option<File>,
}

impl Write for Raw {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        if let Some(f) = &mut self.file {
            f.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Finished {
    digest: String,
    diff_id: String,
    raw: u64,
    file: Option<File>,
}

impl Upload {
    fn new(keep: bool) -> Result<Upload> {
        let file = if keep {
            Some(tempfile::tempfile().context("creating a capture file")?)
        } else {
            None
        };
        Ok(Upload {
            compressed: Sha256::new(),
            size: 0,
            sink: Sink::Sniffing(
                Vec::new(),
                Raw {
                    hasher: Sha256::new(),
                    len: 0,
                    file,
                },
            ),
        })
    }

    // The page-cache writes of a kept upload are small and happen inline.
    async fn feed_body(&mut self, mut body: Incoming) -> Result<()> {
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame.context("reading an upload")?.data_ref() {
                self.feed(d).context("decompressing an upload")?;
            }
        }
        Ok(())
    }

    fn feed(&mut self, data: &[u8]) -> io::Result<()> {
        self.compressed.update(data);
        self.size += data.len() as u64;
        if let Sink::Sniffing(head, _) = &mut self.sink {
            head.extend_from_slice(data);
            if head.len() < 2 {
                return Ok(());
            }
            let Sink::Sniffing(head, raw) = std::mem::replace(&mut self.sink, Sink::Gone) else {
                unreachable!()
            };
            self.sink = if head[..2] == [0x1f, 0x8b] {
                Sink::Gzip(GzDecoder::new(raw))
            } else {
                Sink::Plain(raw)
            };
            return self.write_sink(&head);
        }
        self.write_sink(data)
    }

    fn write_sink(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.sink {
            Sink::Gzip(g) => g.write_all(data),
            Sink::Plain(r) => r.write_all(data),
            Sink::Sniffing(..) | Sink::Gone => Ok(()),
        }
    }

    fn finish(self) -> Result<Finished> {
        let digest = Digest::from_sha256(&self.compressed.finalize())
            .as_str()
            .to_string();
        let mut raw = match self.sink {
            Sink::Gzip(g) => g
                .finish()
                .context("an upload's gzip stream is incomplete")?,
            Sink::Plain(r) => r,
            Sink::Sniffing(head, mut r) => {
                r.write_all(&head)?;
                r
            }
            Sink::Gone => anyhow::bail!("an upload was lost"),
        };
        if let Some(f) = &mut raw.file {
            f.rewind()?;
        }
        Ok(Finished {
            digest,
            diff_id: Digest::from_sha256(&raw.hasher.finalize())
                .as_str()
                .to_string(),
            raw: raw.len,
            file: raw.file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn uploads_are_decompressed_hashed_and_kept() {
        let content = b"layer content ".repeat(1000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&content).unwrap();
        let gz = gz.finish().unwrap();
        let mut up = Upload::new(true).unwrap();
        // Split so that the gzip magic straddles two writes.
        up.feed(&gz[..1]).unwrap();
        for c in gz[1..].chunks(777) {
            up.feed(c).unwrap();
        }
        let f = up.finish().unwrap();
        assert_eq!(f.digest, Digest::from_sha256(&Sha256::digest(&gz)).as_str());
        assert_eq!(
            f.diff_id,
            Digest::from_sha256(&Sha256::digest(&content)).as_str()
        );
        assert_eq!(f.raw, content.len() as u64);
        let mut back = Vec::new();
        f.file.unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, content);
    }

    #[test]
    fn plain_uploads_pass_as_they_are_and_truncated_gzip_fails() {
        let mut up = Upload::new(false).unwrap();
        up.feed(b"{\"config\":1}").unwrap();
        let f = up.finish().unwrap();
        assert_eq!(f.digest, f.diff_id);
        assert!(f.file.is_none());

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&[7u8; 5000]).unwrap();
        let gz = gz.finish().unwrap();
        let mut up = Upload::new(false).unwrap();
        up.feed(&gz[..gz.len() / 2]).unwrap();
        assert!(up.finish().is_err());
    }
}
