//! What a request arriving through a tunnel may do, and its forwarding to
//! the registry on this machine's loopback.
//!
//! Unlike the relay gate (reads for the far side), this carries a push:
//! uploads and manifest writes, but only for the one repository being
//! pushed, and only with the push's credentials.

use std::sync::Arc;

use futures_util::TryStreamExt;
use http_body_util::BodyStream;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, LOCATION};
use hyper::{Request, Response, StatusCode};

use crate::auth::Credentials;
use crate::http::Body;
use crate::registry::path::{self, Route};
use crate::registry::server::{error, unauthorized};
use crate::upstream::{or_unavailable, respond, Upstream};

pub struct Forward {
    upstream: Upstream,
    /// What the daemon must present.
    expected: Credentials,
    /// The endpoint's edge already refused requests without credentials.
    edge_checked: bool,
    repository: String,
}

const REQUEST_HEADERS: &[&str] = &[
    "accept",
    "content-type",
    "content-length",
    "content-range",
    "range",
];

const RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-range",
    "range",
    "accept-ranges",
    "docker-content-digest",
    "docker-distribution-api-version",
    "docker-upload-uuid",
    "etag",
    "location",
];

impl Forward {
    pub fn new(
        upstream: String,
        upstream_auth: Option<Credentials>,
        expected: Credentials,
        edge_checked: bool,
        repository: String,
    ) -> Arc<Forward> {
        Arc::new(Forward {
            // Redirects go back to the daemon, through the tunnel.
            upstream: Upstream::new(upstream, upstream_auth, false),
            expected,
            edge_checked,
            repository,
        })
    }

    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let auth = req.headers().get(AUTHORIZATION).map(|h| h.as_bytes());
        let authorized = match auth {
            Some(_) => self.expected.matches(auth),
            None => self.edge_checked,
        };
        if !authorized {
            return unauthorized();
        }
        let allowed = match path::parse(req.uri().path()) {
            Some(Route::Base) => true,
            Some(Route::Tags { .. }) | None => false,
            Some(r) => r.name() == Some(self.repository.as_str()),
        };
        if !allowed {
            tracing::warn!(method = %req.method(), path = req.uri().path(), "tunnel: request denied");
            return error(
                StatusCode::FORBIDDEN,
                "DENIED",
                "this endpoint takes only the push of one repository",
            );
        }
        or_unavailable("tunnel", self.forward(req).await)
    }

    async fn forward(&self, req: Request<Incoming>) -> anyhow::Result<Response<Body>> {
        let mut target = req.uri().path().to_string();
        if let Some(q) = req.uri().query() {
            // A cross-repository mount names another repository: drop the
            // query so the registry starts a plain upload instead.
            if !q
                .split('&')
                .any(|kv| kv.starts_with("mount=") || kv.starts_with("from="))
            {
                target.push('?');
                target.push_str(q);
            }
        }
        let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())?;
        let out = self
            .upstream
            .request(method, &target, req.headers(), REQUEST_HEADERS);
        let body = BodyStream::new(req.into_body())
            .try_filter_map(|f| async move { Ok(f.into_data().ok()) });
        let resp = out.body(reqwest::Body::wrap_stream(body)).send().await?;
        let mut r = respond(resp, RESPONSE_HEADERS)?;
        // The daemon must come back through the tunnel, not to our
        // loopback: make absolute locations relative.
        if let Some(loc) = r.headers().get(LOCATION) {
            let rel = relative_location(&String::from_utf8_lossy(loc.as_bytes()));
            r.headers_mut()
                .insert(LOCATION, HeaderValue::from_str(&rel)?);
        }
        Ok(r)
    }
}

/// `http://127.0.0.1:5000/v2/x/blobs/uploads/u?_state=…` → `/v2/x/blobs/uploads/u?_state=…`.
fn relative_location(loc: &str) -> String {
    match loc.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => rest[i..].to_string(),
            None => "/".to_string(),
        },
        None => loc.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::relative_location;

    #[test]
    fn locations_become_relative() {
        assert_eq!(
            relative_location("http://127.0.0.1:5000/v2/a/blobs/uploads/u?_state=x"),
            "/v2/a/blobs/uploads/u?_state=x"
        );
        assert_eq!(
            relative_location("/v2/a/manifests/sha256:ab"),
            "/v2/a/manifests/sha256:ab"
        );
        assert_eq!(relative_location("https://h"), "/");
    }
}
