//! Forwarding a request to the registry on 127.0.0.1 and its answer back,
//! shared by the relay gate (the far daemon's reads) and the tunnel (a
//! detached daemon's push). Bodies stream both ways; nothing is buffered.

use futures_util::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::AUTHORIZATION;
use hyper::{HeaderMap, Response, StatusCode};

use crate::auth::Credentials;
use crate::http::Body;
use crate::registry::server::error;

pub struct Upstream {
    /// The registry, e.g. `http://127.0.0.1:41234`.
    base: String,
    /// What we present to the registry (the embedded one wants it).
    auth: Option<Credentials>,
    client: reqwest::Client,
}

impl Upstream {
    /// `follow_redirects`: whether a redirect from the registry is followed
    /// here or handed back to the client.
    pub fn new(base: String, auth: Option<Credentials>, follow_redirects: bool) -> Upstream {
        let redirects = if follow_redirects {
            reqwest::redirect::Policy::default()
        } else {
            reqwest::redirect::Policy::none()
        };
        Upstream {
            base,
            auth,
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(redirects)
                .build()
                .expect("a plain HTTP client builds"),
        }
    }

    /// A request for `path_and_query` on the registry, carrying our
    /// credentials and the headers named in `copy` from the client's request.
    pub fn request(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        from: &HeaderMap,
        copy: &[&str],
    ) -> reqwest::RequestBuilder {
        let mut out = self
            .client
            .request(method, format!("{}{path_and_query}", self.base));
        for name in copy {
            for v in from.get_all(*name) {
                out = out.header(*name, v.as_bytes());
            }
        }
        if let Some(c) = &self.auth {
            out = out.header(AUTHORIZATION.as_str(), c.basic_header());
        }
        out
    }
}

/// The registry's answer as ours: its status, the headers named in `pass`,
/// and its body streamed.
pub fn respond(resp: reqwest::Response, pass: &[&str]) -> anyhow::Result<Response<Body>> {
    let mut b = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if pass.contains(&k.as_str()) {
            b = b.header(k.as_str(), v.as_bytes());
        }
    }
    let stream = resp
        .bytes_stream()
        .map_ok(Frame::data)
        .map_err(std::io::Error::other);
    Ok(b.body(BodyExt::boxed(StreamBody::new(stream)))?)
}

/// A forwarding result as the client's answer: a failure to reach the
/// registry is logged (under `who`) and answered 502.
pub fn or_unavailable(who: &str, r: anyhow::Result<Response<Body>>) -> Response<Body> {
    r.unwrap_or_else(|e| {
        tracing::warn!("{who}: forwarding to the registry failed: {e:#}");
        error(
            StatusCode::BAD_GATEWAY,
            "UNAVAILABLE",
            "registry unreachable",
        )
    })
}
