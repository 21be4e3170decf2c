//! The embedded registry: an OCI distribution-spec server on 127.0.0.1.
//!
//! It serves what `docker push` and `docker pull` (and skopeo) use: the base
//! check, blob HEAD/GET (with ranges), monolithic and chunked uploads with
//! digest verification, cross-repository mounts, manifests by tag and digest
//! with media-type negotiation, and tag listing. Every request must carry the
//! per-run credentials: another local user who finds the port gets 401.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RANGE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::path::{self, Digest, Reference, Route};
use super::store::{Store, UploadError};
use crate::auth::Credentials;
use crate::http::{empty, full, serve_listener, Body};

pub const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MANIFEST_LIST_V2: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Largest manifest accepted (distribution uses 4 MiB too).
const MAX_MANIFEST: usize = 4 << 20;

/// A running registry. Dropping it stops it and removes its storage.
pub struct Registry {
    addr: SocketAddr,
    stop: CancellationToken,
    credentials: Credentials,
    _store: Arc<Store>,
}

impl Registry {
    /// Start on 127.0.0.1, port 0, guarded by fresh credentials.
    pub async fn start() -> Result<Registry> {
        let store = Arc::new(Store::new()?);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the embedded registry to 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let credentials = Credentials::generate("dos-push");
        let stop = CancellationToken::new();
        let handler_store = store.clone();
        let creds = credentials.clone();
        serve_listener(listener, stop.clone(), move |req| {
            handle(handler_store.clone(), creds.clone(), req)
        });
        tracing::debug!(%addr, "embedded registry listening");
        Ok(Registry {
            addr,
            stop,
            credentials,
            _store: store,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(store: Arc<Store>, creds: Credentials, req: Request<Incoming>) -> Response<Body> {
    versioned(route(&store, &creds, req).await)
}

/// Every registry response says which API it speaks (clients check).
pub(crate) fn versioned(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

async fn route(store: &Store, creds: &Credentials, req: Request<Incoming>) -> Response<Body> {
    if !creds.matches(req.headers().get(AUTHORIZATION).map(|h| h.as_bytes())) {
        return unauthorized();
    }
    let Some(route) = path::parse(req.uri().path()) else {
        return error(StatusCode::NOT_FOUND, "NAME_INVALID", "not a registry path");
    };
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let result = match (&method, route) {
        (&Method::GET | &Method::HEAD, Route::Base) => Ok(json(StatusCode::OK, "{}")),
        (&Method::GET | &Method::HEAD, Route::Blob { name, digest }) => {
            get_blob(store, &name, &digest, &req, method == Method::HEAD).await
        }
        (&Method::POST, Route::UploadStart { name }) => {
            start_upload(store, &name, &query, req).await
        }
        (&Method::PATCH, Route::Upload { name, id }) => patch_upload(store, &name, &id, req).await,
        (&Method::PUT, Route::Upload { name, id }) => {
            put_upload(store, &name, &id, &query, req).await
        }
        (&Method::GET, Route::Upload { name, id }) => match store.upload_size(&name, &id) {
            Ok(size) => Ok(upload_accepted(StatusCode::NO_CONTENT, &name, &id, size)),
            Err(e) => Ok(upload_error(e)),
        },
        (&Method::DELETE, Route::Upload { name, id }) => match store.take_upload(&name, &id) {
            Ok(_) => {
                store.cancel_upload(&id);
                Ok(status(StatusCode::NO_CONTENT))
            }
            Err(e) => Ok(upload_error(e)),
        },
        (&Method::PUT, Route::Manifest { name, reference }) => {
            put_manifest(store, &name, reference, req).await
        }
        (&Method::GET | &Method::HEAD, Route::Manifest { name, reference }) => {
            get_manifest(store, &name, &reference, &req, method == Method::HEAD).await
        }
        (&Method::DELETE, Route::Manifest { name, reference }) => {
            Ok(if store.delete_manifest(&name, &reference) {
                status(StatusCode::ACCEPTED)
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    "manifest unknown",
                )
            })
        }
        (&Method::GET, Route::Tags { name }) => Ok(match store.tags(&name) {
            Some(tags) => json(
                StatusCode::OK,
                serde_json::json!({ "name": name, "tags": tags }).to_string(),
            ),
            None => error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "repository unknown"),
        }),
        _ => Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "operation not supported",
        )),
    };
    result.unwrap_or_else(|e| {
        tracing::warn!("registry: {e:#}");
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            &format!("{e:#}"),
        )
    })
}

async fn get_blob(
    store: &Store,
    name: &str,
    digest: &Digest,
    req: &Request<Incoming>,
    head: bool,
) -> Result<Response<Body>> {
    if !store.has_blob(name, digest) {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "blob unknown to registry",
        ));
    }
    let mut file = tokio::fs::File::open(store.blob_path(digest)).await?;
    let size = file.metadata().await?.len();
    let range = req
        .headers()
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, size));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, size),
        Some(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e),
        Some(None) => {
            return Ok(Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header("Content-Range", format!("bytes */{size}"))
                .body(empty())?)
        }
    };
    let mut b = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, end - start)
        .header("Docker-Content-Digest", digest.as_str())
        .header("Accept-Ranges", "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header("Content-Range", format!("bytes {start}-{}/{size}", end - 1));
    }
    if head {
        return Ok(b.body(empty())?);
    }
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(end - start), 64 * 1024)
        .map_ok(Frame::data);
    Ok(b.body(BodyExt::boxed(StreamBody::new(stream)))?)
}

/// `bytes=START-` or `bytes=START-END` → half-open [start, end).
fn parse_range(v: &str, size: u64) -> Option<(u64, u64)> {
    let spec = v.strip_prefix("bytes=")?;
    let (s, e) = spec.split_once('-')?;
    let start: u64 = s.trim().parse().ok()?;
    let end = if e.trim().is_empty() {
        size
    } else {
        e.trim().parse::<u64>().ok()?.saturating_add(1).min(size)
    };
    (start < end).then_some((start, end))
}

async fn start_upload(
    store: &Store,
    name: &str,
    query: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let q = query_pairs(query);
    if let (Some(mount), Some(from)) = (q.get("mount"), q.get("from")) {
        if let Some(d) = Digest::parse(mount) {
            if path::valid_name(from) && store.mount(name, from, &d) {
                return Ok(blob_created(name, &d));
            }
        }
        // Not mountable: fall through to a normal upload, as the spec says.
    }
    let id = store.start_upload(name).await?;
    if let Some(d) = q.get("digest") {
        // Monolithic upload: the whole blob is this request's body.
        let Some(expected) = Digest::parse(d) else {
            store.cancel_upload(&id);
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                "invalid digest",
            ));
        };
        let Ok(mut up) = store.take_upload(name, &id) else {
            return Ok(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "upload vanished",
            ));
        };
        if let Err(e) = append_body(&mut up, req.into_body()).await {
            store.cancel_upload(&id);
            return Err(e);
        }
        return finish(store, &id, up, &expected, name).await;
    }
    Ok(upload_accepted(StatusCode::ACCEPTED, name, &id, 0))
}

async fn patch_upload(
    store: &Store,
    name: &str,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let mut up = match store.take_upload(name, id) {
        Ok(u) => u,
        Err(e) => return Ok(upload_error(e)),
    };
    // Chunks must arrive in order: Content-Range's start is the current size.
    if let Some(cr) = req
        .headers()
        .get("Content-Range")
        .and_then(|v| v.to_str().ok())
    {
        let start = cr
            .trim_start_matches("bytes ")
            .split('-')
            .next()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if start != Some(up.size) {
            let size = up.size;
            store.put_back(id, up);
            return Ok(Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header("Location", upload_location(name, id))
                .header("Range", range_header(size))
                .header("Docker-Upload-UUID", id)
                .body(empty())?);
        }
    }
    if let Err(e) = append_body(&mut up, req.into_body()).await {
        store.cancel_upload(id);
        return Err(e);
    }
    let size = up.size;
    store.put_back(id, up);
    Ok(upload_accepted(StatusCode::ACCEPTED, name, id, size))
}

async fn put_upload(
    store: &Store,
    name: &str,
    id: &str,
    query: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let q = query_pairs(query);
    let Some(expected) = q.get("digest").and_then(|d| Digest::parse(d)) else {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "missing or invalid digest",
        ));
    };
    let mut up = match store.take_upload(name, id) {
        Ok(u) => u,
        Err(e) => return Ok(upload_error(e)),
    };
    if let Err(e) = append_body(&mut up, req.into_body()).await {
        store.cancel_upload(id);
        return Err(e);
    }
    finish(store, id, up, &expected, name).await
}

async fn finish(
    store: &Store,
    id: &str,
    up: super::store::Upload,
    expected: &Digest,
    name: &str,
) -> Result<Response<Body>> {
    if store.commit_upload(id, up, expected).await? {
        Ok(blob_created(name, expected))
    } else {
        Ok(error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "uploaded content does not match the digest",
        ))
    }
}

async fn append_body(up: &mut super::store::Upload, mut body: Incoming) -> Result<()> {
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading an upload body")?;
        if let Some(data) = frame.data_ref() {
            up.append(data).await.context("writing an upload")?;
        }
    }
    Ok(())
}

async fn put_manifest(
    store: &Store,
    name: &str,
    reference: Reference,
    req: Request<Incoming>,
) -> Result<Response<Body>> {
    let media_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    let body = http_body_util::Limited::new(req.into_body(), MAX_MANIFEST)
        .collect()
        .await;
    let body: Bytes = match body {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "SIZE_INVALID",
                "manifest too large or unreadable",
            ))
        }
    };
    let digest = Digest::from_sha256(&sha2::Sha256::digest(&body));
    if let Reference::Digest(d) = &reference {
        if d != &digest {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                "manifest digest mismatch",
            ));
        }
    }
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                &format!("{e}"),
            ))
        }
    };
    let declared = json.get("mediaType").and_then(|v| v.as_str());
    let media_type = match (media_type.as_str(), declared) {
        ("", Some(d)) => d.to_string(),
        ("", None) => OCI_MANIFEST.to_string(),
        (ct, Some(d)) if ct != d => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                "Content-Type does not match the manifest's mediaType",
            ))
        }
        (ct, _) => ct.to_string(),
    };
    if let Err(missing) = check_references(store, name, &media_type, &json) {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "MANIFEST_BLOB_UNKNOWN",
            &format!("manifest references unknown {missing}"),
        ));
    }
    let tag = match &reference {
        Reference::Tag(t) => Some(t.as_str()),
        Reference::Digest(_) => None,
    };
    store
        .put_manifest(name, &digest, &media_type, &body, tag)
        .await?;
    Ok(Response::builder()
        .status(StatusCode::CREATED)
        .header("Location", format!("/v2/{name}/manifests/{digest}"))
        .header("Docker-Content-Digest", digest.as_str())
        .header(CONTENT_LENGTH, 0)
        .body(empty())?)
}

/// Everything a manifest points at must already be in the repository.
fn check_references(
    store: &Store,
    name: &str,
    media_type: &str,
    json: &serde_json::Value,
) -> Result<(), String> {
    let digest_of = |v: &serde_json::Value| {
        v.get("digest")
            .and_then(|d| d.as_str())
            .and_then(Digest::parse)
            .ok_or_else(|| "descriptor without a valid digest".to_string())
    };
    match media_type {
        MANIFEST_LIST_V2 | OCI_INDEX => {
            for m in json
                .get("manifests")
                .and_then(|m| m.as_array())
                .into_iter()
                .flatten()
            {
                let d = digest_of(m)?;
                if !store.has_manifest(name, &d) {
                    return Err(format!("manifest {d}"));
                }
            }
        }
        MANIFEST_V2 | OCI_MANIFEST => {
            let config = json.get("config").ok_or("manifest without config")?;
            let d = digest_of(config)?;
            if !store.has_blob(name, &d) {
                return Err(format!("blob {d}"));
            }
            for l in json
                .get("layers")
                .and_then(|m| m.as_array())
                .into_iter()
                .flatten()
            {
                // Foreign layers live elsewhere (their descriptor has urls).
                if l.get("urls").is_some() {
                    continue;
                }
                let d = digest_of(l)?;
                if !store.has_blob(name, &d) {
                    return Err(format!("blob {d}"));
                }
            }
        }
        other => return Err(format!("media type {other}")),
    }
    Ok(())
}

async fn get_manifest(
    store: &Store,
    name: &str,
    reference: &Reference,
    req: &Request<Incoming>,
    head: bool,
) -> Result<Response<Body>> {
    let Some((digest, media_type)) = store.resolve(name, reference) else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
        ));
    };
    if !accepts(req, &media_type) {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            &format!("manifest is {media_type}, which the client's Accept header does not list"),
        ));
    }
    let body = tokio::fs::read(store.blob_path(&digest)).await?;
    let b = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, media_type)
        .header(CONTENT_LENGTH, body.len())
        .header("Docker-Content-Digest", digest.as_str());
    Ok(b.body(if head { empty() } else { full(body) })?)
}

/// Media-type negotiation: no Accept header (or `*/*`) takes anything;
/// otherwise the stored type must be listed. Accept may repeat and may hold
/// comma-separated lists with parameters.
fn accepts(req: &Request<Incoming>, media_type: &str) -> bool {
    let mut any_header = false;
    for v in req.headers().get_all(ACCEPT) {
        any_header = true;
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let t = item.split(';').next().unwrap_or("").trim();
            if t == media_type || t == "*/*" {
                return true;
            }
        }
    }
    !any_header
}

pub(crate) fn query_pairs(q: &str) -> std::collections::HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hexval = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hexval(b[i + 1]), hexval(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn upload_location(name: &str, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// The `Range` header of an upload: the inclusive range received so far.
fn range_header(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

pub(crate) fn upload_accepted(
    status: StatusCode,
    name: &str,
    id: &str,
    size: u64,
) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("Location", upload_location(name, id))
        .header("Range", range_header(size))
        .header("Docker-Upload-UUID", id)
        .header(CONTENT_LENGTH, 0)
        .body(empty())
        .expect("static response")
}

fn upload_error(e: UploadError) -> Response<Body> {
    match e {
        UploadError::Unknown => error(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "upload unknown",
        ),
        UploadError::Busy => error(
            StatusCode::CONFLICT,
            "BLOB_UPLOAD_INVALID",
            "another request is writing this upload",
        ),
    }
}

pub(crate) fn blob_created(name: &str, d: &Digest) -> Response<Body> {
    Response::builder()
        .status(StatusCode::CREATED)
        .header("Location", format!("/v2/{name}/blobs/{d}"))
        .header("Docker-Content-Digest", d.as_str())
        .header(CONTENT_LENGTH, 0)
        .body(empty())
        .expect("static response")
}

/// An empty response with this status.
pub(crate) fn status(s: StatusCode) -> Response<Body> {
    Response::builder()
        .status(s)
        .header(CONTENT_LENGTH, 0)
        .body(empty())
        .expect("static response")
}

fn json(s: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(s)
        .header(CONTENT_TYPE, "application/json")
        .body(full(body))
        .expect("static response")
}

/// A distribution-spec error body.
pub fn error(s: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        s,
        serde_json::json!({ "errors": [{ "code": code, "message": message }] }).to_string(),
    )
}

pub fn unauthorized() -> Response<Body> {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required",
    );
    r.headers_mut().insert(
        "WWW-Authenticate",
        HeaderValue::from_static("Basic realm=\"dos\""),
    );
    r
}

use sha2::Digest as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Some((0, 10)));
        assert_eq!(parse_range("bytes=3-5", 10), Some((3, 6)));
        assert_eq!(parse_range("bytes=3-100", 10), Some((3, 10)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("lines=1-2", 10), None);
    }

    #[test]
    fn query_decoding() {
        let q = query_pairs("mount=sha256%3Aab&from=a%2Fb&x");
        assert_eq!(q["mount"], "sha256:ab");
        assert_eq!(q["from"], "a/b");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
