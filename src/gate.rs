//! The relay gate: what a stream from the far side may do, checked on the
//! pushing side before anything reaches the registry.
//!
//! The far daemon's connections arrive as mux streams and are served here as
//! HTTP. A request passes only with the transfer's one-time credentials, and
//! only as a read (GET/HEAD) of the offered repository's manifests and blobs,
//! so a service registry holding other images shows nothing else. Passing
//! requests are forwarded to the registry (embedded or service).

use std::sync::Arc;

use futures_util::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{ACCEPT, AUTHORIZATION, RANGE};
use hyper::{Method, Request, Response, StatusCode};

use crate::auth::Credentials;
use crate::http::Body;
use crate::registry::path::{self, Route};
use crate::registry::server::{error, unauthorized};

pub struct Gate {
    /// The registry, e.g. `http://127.0.0.1:41234`.
    upstream: String,
    /// What the gate presents to the registry (the embedded one wants it).
    upstream_auth: Option<Credentials>,
    /// What the far side must present.
    expected: Credentials,
    repository: String,
    client: reqwest::Client,
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
            upstream,
            upstream_auth,
            expected,
            repository,
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("a plain HTTP client builds"),
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
        match self.forward(req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("relay: forwarding to the registry failed: {e:#}");
                error(
                    StatusCode::BAD_GATEWAY,
                    "UNAVAILABLE",
                    "registry unreachable",
                )
            }
        }
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
        let url = format!("{}{}", self.upstream, req.uri().path());
        let method = if req.method() == Method::HEAD {
            reqwest::Method::HEAD
        } else {
            reqwest::Method::GET
        };
        let mut out = self.client.request(method, url);
        for name in [ACCEPT, RANGE] {
            for v in req.headers().get_all(&name) {
                out = out.header(name.as_str(), v.as_bytes());
            }
        }
        if let Some(c) = &self.upstream_auth {
            out = out.header(AUTHORIZATION.as_str(), c.basic_header());
        }
        let resp = out.send().await?;
        let mut b = Response::builder().status(resp.status().as_u16());
        for (k, v) in resp.headers() {
            if PASS_HEADERS.contains(&k.as_str()) {
                b = b.header(k.as_str(), v.as_bytes());
            }
        }
        let stream = resp
            .bytes_stream()
            .map_ok(Frame::data)
            .map_err(std::io::Error::other);
        Ok(b.body(BodyExt::boxed(StreamBody::new(stream)))?)
    }
}
