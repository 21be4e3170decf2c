//! Small HTTP plumbing shared by the registry and the relay gate (hyper 1).

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::mux::{Mux, MuxStream};

/// Response body used everywhere: any stream of bytes.
pub type Body = BoxBody<Bytes, std::io::Error>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e: Infallible| match e {}).boxed()
}

/// An incoming body (a request's or a response's) as a [`Body`], to pass on.
pub fn pass(b: Incoming) -> Body {
    b.map_err(std::io::Error::other).boxed()
}

/// A request body of at most `max` bytes (a manifest: small, from a peer
/// or a daemon, so never trusted to be).
pub async fn read_limited(mut body: Incoming, max: usize) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.context("reading a request body")?.data_ref() {
            if out.len() + d.len() > max {
                anyhow::bail!("a manifest over {max} bytes");
            }
            out.extend_from_slice(d);
        }
    }
    Ok(out)
}

/// Serve one connection (a socket or an in-memory stream) with `handler`.
pub async fn serve_io<I, F, Fut>(io: I, handler: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let h = handler.clone();
        async move { Ok::<_, Infallible>(h(req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!("http connection ended: {e}");
    }
}

/// Serve one stream a peer opened on `mux` with `handler`: the peer's
/// daemon reaching a registry (ours, the hub's) through the session.
pub fn serve_stream<F, Fut>(mux: &Mux, stream: MuxStream, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let (near, far) = tokio::io::duplex(64 * 1024);
    mux.attach(stream, near);
    tokio::spawn(serve_io(far, handler));
}

/// Accept connections until `stop` is cancelled.
pub fn serve_listener<F, Fut>(listener: TcpListener, stop: CancellationToken, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = stop.cancelled() => return,
            };
            match conn {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    let h = handler.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = serve_io(sock, h) => {}
                            _ = stop.cancelled() => {}
                        }
                    });
                }
                Err(e) => tracing::debug!("accept failed: {e}"),
            }
        }
    });
}
