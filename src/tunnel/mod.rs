//! Reaching the push registry from a Docker daemon that can't see this
//! machine's loopback (CI "remote docker", a daemon over tcp:// or ssh://).
//!
//! A [`Tunnel`] opens an [`Endpoint`]: an address the daemon can reach whose
//! edge requires HTTP basic auth with credentials generated for this one
//! push. Connections arriving there are served by [`forward::Forward`],
//! which checks the credentials again, lets through only the pushed
//! repository, and forwards to the registry on 127.0.0.1.
//!
//! - [`ngrok`]: an ngrok endpoint (DOCKER_REGISTRY_NGROK).
//! - [`guarded`]: a listener on an address we choose, enforcing the same
//!   basic auth itself; the tests use it in place of ngrok's edge.

pub mod forward;
pub mod guarded;
pub mod ngrok;

use std::io;
use std::sync::Arc;

use anyhow::Result;
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

use crate::auth::Credentials;
use forward::Forward;

/// A byte stream from the daemon, through the tunnel.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

pub type Conn = Box<dyn Io>;

/// Something that can expose the registry to a far-away daemon.
pub trait Tunnel: Send + Sync {
    /// For messages: "ngrok", "guarded endpoint".
    fn name(&self) -> &'static str;
    /// Open an endpoint that admits only requests carrying `creds`.
    fn open<'a>(&'a self, creds: &'a Credentials) -> BoxFuture<'a, Result<Box<dyn Endpoint>>>;
}

/// An open endpoint.
pub trait Endpoint: Send {
    /// The registry host (and port) the daemon pushes to.
    fn host(&self) -> String;
    /// Whether the endpoint's edge already rejected requests without the
    /// credentials (ngrok). Requests that do carry an Authorization header
    /// are checked here either way.
    fn edge_checks_auth(&self) -> bool;
    /// The next connection; `None` once the endpoint is closed.
    fn accept(&mut self) -> BoxFuture<'_, Option<io::Result<Conn>>>;
    /// Close the endpoint: nothing is reachable through it afterwards.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// An endpoint being served; [`Serving::close`] ends it.
pub struct Serving {
    host: String,
    task: Option<JoinHandle<Box<dyn Endpoint>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Serving {
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Stop accepting, drop open connections and close the endpoint.
    pub async fn close(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if let Ok(ep) = task.await {
                ep.close().await;
            }
        }
    }
}

impl Drop for Serving {
    /// Dropped without `close` (the push was interrupted): stop serving at
    /// once; the accept loop then drops the endpoint, which closes it.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serve `endpoint` with `forward` until closed.
pub fn serve(mut endpoint: Box<dyn Endpoint>, forward: Arc<Forward>) -> Serving {
    let host = endpoint.host();
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                c = endpoint.accept() => c,
                _ = s.cancelled() => break,
            };
            match conn {
                Some(Ok(io)) => {
                    let f = forward.clone();
                    let s = s.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = crate::http::serve_io(io, move |req| f.clone().handle(req)) => {}
                            _ = s.cancelled() => {}
                        }
                    });
                }
                Some(Err(e)) => tracing::debug!("tunnel: accept failed: {e}"),
                None => break,
            }
        }
        endpoint
    });
    Serving {
        host,
        task: Some(task),
        stop,
    }
}
