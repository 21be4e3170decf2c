//! An image's manifest as the daemon's own store holds it, learned without
//! reading a layer.
//!
//! Docker's containerd image store keeps each layer as the blob it arrived
//! as (gzip from a registry, a plain tar from `docker load`) and names the
//! image by its manifest's digest, yet its API shows neither the manifest
//! nor the blobs' digests, and `docker save` writes `index.json` after
//! every blob. A push does show them: the daemon asks the registry about
//! each blob (HEAD) and then uploads the manifest. So dos pushes the image
//! into a registry on 127.0.0.1 that says "already here" to every blob and
//! keeps the manifests it is given. No blob is read or sent; the temporary
//! name is removed before this returns, whatever happened (measured: 25 ms
//! for a one-layer image on Docker 28.5).

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH};
use hyper::{Method, Request, Response, StatusCode};
use rand::RngCore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::oci::{sha256, MAX_MANIFEST};
use crate::auth::Credentials;
use crate::docker::Daemon;
use crate::http::{empty, read_limited, serve_listener, Body};
use crate::registry::path::{self, Route};
use crate::registry::server::{error, status, unauthorized, versioned};

/// At most this many manifests are kept from one push (an index and its
/// platform manifests).
const MAX_KEPT: usize = 64;

/// One manifest the daemon uploaded: its digest and bytes.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: String,
    pub body: Vec<u8>,
}

struct Shared {
    creds: Credentials,
    kept: Mutex<Vec<Pushed>>,
}

/// Push `image` (a name or ID the daemon knows) into a probe registry and
/// return the manifests it uploaded, in upload order (an index last).
pub async fn manifests(daemon: &Daemon, image: &str) -> Result<Vec<Pushed>> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the manifest probe to 127.0.0.1")?;
    let addr = listener.local_addr()?.to_string();
    let shared = Arc::new(Shared {
        creds: Credentials::generate("dos-probe"),
        kept: Mutex::new(Vec::new()),
    });
    let stop = CancellationToken::new();
    let s = shared.clone();
    serve_listener(listener, stop.clone(), move |req| handle(s.clone(), req));
    let mut raw = [0u8; 8];
    rand::rng().fill_bytes(&mut raw);
    let (repo, tag) = (format!("{addr}/dos-probe"), hex::encode(raw));
    let prefix = format!("{addr}/");
    crate::leftovers::watch(daemon, &prefix);
    let pushed = async {
        daemon.tag(image, &repo, &tag).await?;
        daemon
            .push(&repo, &tag, shared.creds.docker(&addr))
            .await
            .with_context(|| format!("reading the manifest of {image} through a push"))
    }
    .await;
    let untagged = daemon.untag(&format!("{repo}:{tag}")).await;
    if untagged.is_ok() {
        crate::leftovers::unwatch(&prefix);
    }
    stop.cancel();
    pushed?;
    untagged?;
    let kept = shared.kept.lock().expect("probe lock").clone();
    Ok(kept)
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    versioned(route(&shared, req).await.unwrap_or_else(|e| {
        tracing::debug!("manifest probe: {e:#}");
        error(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            &format!("{e:#}"),
        )
    }))
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Result<Response<Body>> {
    if !shared
        .creds
        .matches(req.headers().get(AUTHORIZATION).map(|h| h.as_bytes()))
    {
        return Ok(unauthorized());
    }
    let Some(route) = path::parse(req.uri().path()) else {
        return Ok(status(StatusCode::NOT_FOUND));
    };
    Ok(match (req.method(), route) {
        (&Method::GET | &Method::HEAD, Route::Base) => status(StatusCode::OK),
        // Every blob is "already here": the daemon reads none.
        (&Method::HEAD, Route::Blob { digest, .. }) => Response::builder()
            .status(StatusCode::OK)
            .header("Docker-Content-Digest", digest.as_str())
            .header(CONTENT_LENGTH, 0)
            .body(empty())
            .expect("static response"),
        (&Method::PUT, Route::Manifest { name, .. }) => {
            let body = read_limited(req.into_body(), MAX_MANIFEST).await?;
            let digest = sha256(&body);
            let mut kept = shared.kept.lock().expect("probe lock");
            if kept.len() < MAX_KEPT {
                kept.push(Pushed {
                    digest: digest.clone(),
                    body,
                });
            }
            Response::builder()
                .status(StatusCode::CREATED)
                .header("Docker-Content-Digest", &digest)
                .header("Location", format!("/v2/{name}/manifests/{digest}"))
                .header(CONTENT_LENGTH, 0)
                .body(empty())
                .expect("static response")
        }
        // Nothing is stored: no manifest to find, no upload to take.
        _ => status(StatusCode::NOT_FOUND),
    })
}
