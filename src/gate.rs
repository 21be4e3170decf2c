//! The relay gate: what a stream from the far side may do, checked on the
//! pushing side before anything reaches the registry.
//!
//! The far daemon's connections arrive as mux streams and are served here as
//! HTTP. A request passes only with the transfer's one-time credentials, and
//! only as a read (GET/HEAD) of the offered repository's manifests and blobs,
//! so a service registry holding other images shows nothing else. Passing
//! requests are forwarded to the registry (embedded or service).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, RANGE};
use hyper::{Method, Request, Response, StatusCode};

use crate::auth::Credentials;
use crate::http::Body;
use crate::registry::path::{self, Route};
use crate::registry::server::{error, unauthorized};
use crate::upstream::{or_unavailable, respond, Upstream};

pub struct Gate {
    upstream: Upstream,
    /// What the far side must present.
    expected: Credentials,
    repository: String,
}

/// Response headers worth passing back to the daemon.
const PASS_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-range",
    "accept-ranges",
    "docker-content-digest",
    "docker-distribution-api-version",
    "etag",
];

impl Gate {
    pub fn new(
        upstream: String,
        upstream_auth: Option<Credentials>,
        expected: Credentials,
        repository: String,
    ) -> Arc<Gate> {
        Arc::new(Gate {
            upstream: Upstream::new(upstream, upstream_auth, true),
            expected,
            repository,
        })
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if !self
            .expected
            .matches(req.headers().get(AUTHORIZATION).map(|h| h.as_bytes()))
        {
            return unauthorized();
        }
        if !self.allowed(req.method(), req.uri().path()) {
            tracing::warn!(method = %req.method(), path = req.uri().path(), "relay: request denied");
            return error(
                StatusCode::FORBIDDEN,
                "DENIED",
                "this relay serves only reads of the offered image",
            );
        }
        or_unavailable("relay", self.forward(req).await)
    }

    fn allowed(&self, method: &Method, path: &str) -> bool {
        if method != Method::GET && method != Method::HEAD {
            return false;
        }
        match path::parse(path) {
            Some(Route::Base) => true,
            Some(Route::Manifest { name, .. }) | Some(Route::Blob { name, .. }) => {
                name == self.repository
            }
            _ => false,
        }
    }

    async fn forward(&self, req: Request<Incoming>) -> anyhow::Result<Response<Body>> {
        let method = if req.method() == Method::HEAD {
            reqwest::Method::HEAD
        } else {
            reqwest::Method::GET
        };
        let resp = self
            .upstream
            .request(
                method,
                req.uri().path(),
                req.headers(),
                &[ACCEPT.as_str(), RANGE.as_str()],
            )
            .send()
            .await?;
        respond(resp, PASS_HEADERS)
    }
}
