//! The far side's end of the registry relay: the daemon pulls from
//! 127.0.0.1 here, and each of its requests crosses to the pusher's gate
//! ([`crate::gate`]) on a mux stream of its own. The blobs it downloads are
//! kept in the resume spool ([`crate::delta::spool`]) as they arrive.
//!
//! Docker keeps nothing of a blob whose download was cut off, so without
//! this a pull interrupted by a dead link would send the whole image again.
//! With it, the next run serves a blob the spool holds whole from the spool,
//! asks for one it holds a prefix of from where that prefix ends (`Range`),
//! and gives the daemon the whole blob either way. Every byte served from
//! the spool is hashed with the rest: a blob that does not hash to its
//! digest is deleted and its download fails (the daemon checks too), so the
//! next run starts that blob over; so does a blob whose range the registry
//! answers otherwise. The spool's blobs go once the image is in place
//! ([`Relay::loaded`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::auth::Credentials;
use crate::delta::spool::{Entry, Spool, PROBE};
use crate::http::{self, Body};
use crate::mux::Mux;
use crate::registry::path::{self, Route};
use crate::registry::server::error;

/// Bytes read from a spool file at a time.
const CHUNK: usize = 128 * 1024;

/// The relay of one pull.
pub struct Relay {
    mux: Mux,
    spool: Option<Spool>,
    /// The pull's one-time credentials: only a request bearing them is
    /// answered from the spool (the gate checks every other).
    creds: Credentials,
    /// Blobs this pull has spooled whole, and whether the image is in place
    /// (then a blob finishing late removes its own file).
    spooled: Mutex<Spooled>,
}

#[derive(Default)]
struct Spooled {
    blobs: HashSet<String>,
    loaded: bool,
}

impl Relay {
    pub fn new(mux: Mux, creds: Credentials) -> Arc<Relay> {
        Arc::new(Relay {
            mux,
            spool: Spool::from_env(),
            creds,
            spooled: Mutex::new(Spooled::default()),
        })
    }

    /// Serve the daemon's connections on `listener` (until aborted).
    pub fn serve(self: &Arc<Self>, listener: TcpListener) -> JoinHandle<()> {
        let relay = self.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                let r = relay.clone();
                tokio::spawn(http::serve_io(sock, move |req| r.clone().handle(req)));
            }
        })
    }

    /// The image is in place: the spool need not keep its blobs.
    pub fn loaded(&self) {
        let Some(spool) = &self.spool else { return };
        let mut spooled = self.spooled.lock().unwrap();
        spooled.loaded = true;
        for d in spooled.blobs.drain() {
            if let Some(e) = spool.existing(&d) {
                e.remove();
            }
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let r = match self.spoolable(&req) {
            Some(digest) => self.blob(req, digest).await,
            None => self
                .send(req.map(http::pass))
                .await
                .map(|r| r.map(http::pass)),
        };
        r.unwrap_or_else(|e| {
            tracing::warn!("relay: {e:#}");
            error(StatusCode::BAD_GATEWAY, "UNAVAILABLE", "the relay is gone")
        })
    }

    /// The blob a request downloads whole, if the spool may hold it.
    fn spoolable(&self, req: &Request<Incoming>) -> Option<String> {
        self.spool.as_ref()?;
        let whole = req.method() == Method::GET && !req.headers().contains_key(RANGE);
        let ours = self
            .creds
            .matches(req.headers().get(AUTHORIZATION).map(|h| h.as_bytes()));
        match path::parse(req.uri().path())? {
            Route::Blob { digest, .. } if whole && ours => Some(digest.to_string()),
            _ => None,
        }
    }

    /// One request to the pusher's gate, on a stream of its own.
    async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>> {
        let stream = self.mux.open().await.context("opening a relay stream")?;
        let (near, far) = tokio::io::duplex(256 * 1024);
        self.mux.attach(stream, near);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(far))
            .await
            .context("relaying to the pusher")?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("relay stream: {e}");
            }
        });
        sender
            .send_request(req)
            .await
            .context("relaying to the pusher")
    }

    /// A whole blob for the daemon: from the spool as far as it holds it,
    /// the rest from the pusher, spooled as it comes.
    async fn blob(
        self: Arc<Self>,
        req: Request<Incoming>,
        digest: String,
    ) -> Result<Response<Body>> {
        let spool = self.spool.clone().expect("spoolable() checked it");
        let held = spool.existing(&digest);
        let from = held.as_ref().map_or(0, Entry::held);
        let (mut parts, _) = req.into_parts();
        // The request as the daemon made it, should the range not be taken.
        let plain = (parts.uri.clone(), parts.headers.clone());
        if from > 0 {
            parts
                .headers
                .insert(RANGE, HeaderValue::from_str(&format!("bytes={from}-"))?);
        }
        let up = self.send(Request::from_parts(parts, http::empty())).await?;
        let range = up
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok());
        let (entry, prefix, rest, total) = match (held, up.status()) {
            // The rest of a blob the spool holds a prefix of.
            (Some(e), StatusCode::PARTIAL_CONTENT) if range.and_then(range_start) == Some(from) => {
                let total = range
                    .and_then(range_total)
                    .context("a range without its size")?;
                tracing::info!("relay: {digest}: {from} of {total} bytes from the resume spool");
                (Some(e), from, Some(up.into_body()), total)
            }
            // The spool holds it whole.
            (Some(e), StatusCode::RANGE_NOT_SATISFIABLE)
                if range.and_then(range_total) == Some(from) =>
            {
                tracing::info!("relay: {digest}: all {from} bytes from the resume spool");
                (Some(e), from, None, from)
            }
            // From its first byte.
            (held, StatusCode::OK) => {
                let total: Option<u64> = up
                    .headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok());
                let Some(total) = total else {
                    return Ok(up.map(http::pass));
                };
                let entry = match held {
                    Some(mut e) => {
                        e.truncate(0);
                        Some(e)
                    }
                    None => {
                        let keep = self.spooled.lock().unwrap().blobs.clone();
                        spool.create(&digest, total, &keep)
                    }
                };
                (entry, 0, Some(up.into_body()), total)
            }
            // A range the registry answered otherwise: the daemon's own
            // request, its answer as it is, this blob not spooled.
            (Some(e), _) => {
                e.remove();
                drop(up);
                let mut req = Request::get(plain.0).body(http::empty())?;
                *req.headers_mut() = plain.1;
                let up = self.send(req).await?;
                return Ok(up.map(http::pass));
            }
            // A refusal or an error: the daemon sees it as it is.
            (None, _) => return Ok(up.map(http::pass)),
        };
        let (tx, rx) = mpsc::channel(4);
        let fill = Fill {
            relay: self.clone(),
            spool,
            digest: digest.clone(),
            entry,
            prefix,
            rest,
            tx,
        };
        tokio::spawn(fill.run());
        let body =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
            );
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_LENGTH, total)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header("docker-content-digest", &digest)
            .body(BodyExt::boxed(StreamBody::new(body)))?)
    }
}

/// What feeds one blob's body: the spool's prefix, then the pusher's rest.
struct Fill {
    relay: Arc<Relay>,
    spool: Spool,
    digest: String,
    entry: Option<Entry>,
    prefix: u64,
    rest: Option<Incoming>,
    tx: mpsc::Sender<std::io::Result<Frame<Bytes>>>,
}

impl Fill {
    async fn run(mut self) {
        let mut hash = Sha256::new();
        if let Err(e) = self.pump(&mut hash).await {
            // The entry keeps what arrived: the next run goes on from there.
            let _ = self.tx.send(Err(std::io::Error::other(e))).await;
            return;
        }
        let got = format!("sha256:{}", hex::encode(hash.finalize()));
        if got != self.digest {
            if let Some(e) = self.entry.take() {
                e.remove();
            }
            let msg = format!("blob {} hashes to {got}", self.digest);
            tracing::warn!("relay: {msg}");
            let _ = self.tx.send(Err(std::io::Error::other(msg))).await;
            return;
        }
        if let Some(e) = self.entry.take().filter(Entry::usable) {
            let mut spooled = self.relay.spooled.lock().unwrap();
            if spooled.loaded {
                e.remove();
            } else {
                spooled.blobs.insert(self.digest.clone());
            }
        }
    }

    async fn pump(&mut self, hash: &mut Sha256) -> Result<(), String> {
        let mut pos = 0;
        while pos < self.prefix {
            let entry = self.entry.as_mut().ok_or("the spool file is gone")?;
            let mut buf = vec![0u8; CHUNK.min((self.prefix - pos) as usize)];
            let n = entry
                .read_at(pos, &mut buf)
                .map_err(|e| format!("reading the resume spool: {e}"))?;
            if n == 0 {
                return Err("the resume spool file is shorter than it was".into());
            }
            buf.truncate(n);
            hash.update(&buf);
            pos += n as u64;
            self.give(Bytes::from(buf)).await?;
        }
        let Some(mut rest) = self.rest.take() else {
            return Ok(());
        };
        let started = Instant::now();
        let mut fresh = 0u64;
        while let Some(frame) = rest.frame().await {
            let frame = frame.map_err(|e| format!("the relay stream ended: {e}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            hash.update(&data);
            fresh += data.len() as u64;
            if let Some(e) = self.entry.as_mut() {
                e.append(&data);
            }
            // As the delta path does: a blob arriving fast is not kept.
            if fresh >= PROBE
                && fresh - (data.len() as u64) < PROBE
                && !self
                    .spool
                    .worth_keeping(fresh, started.elapsed().as_secs_f64())
            {
                if let Some(e) = self.entry.take() {
                    e.remove();
                }
            }
            self.give(data).await?;
        }
        Ok(())
    }

    async fn give(&self, data: Bytes) -> Result<(), String> {
        self.tx
            .send(Ok(Frame::data(data)))
            .await
            .map_err(|_| "the daemon stopped reading".to_string())
    }
}

/// `bytes START-END/TOTAL` → START.
fn range_start(v: &str) -> Option<u64> {
    v.strip_prefix("bytes ")?.split('-').next()?.parse().ok()
}

/// `bytes START-END/TOTAL` or `bytes */TOTAL` → TOTAL.
fn range_total(v: &str) -> Option<u64> {
    v.rsplit_once('/')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_total("bytes 100-199/200"), Some(200));
        assert_eq!(range_total("bytes */200"), Some(200));
        assert_eq!(range_start("bytes */200"), None);
        assert_eq!(range_start("items 1-2/3"), None);
    }
}
