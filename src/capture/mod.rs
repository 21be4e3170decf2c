//! Reading only the new layers out of the local daemon.
//!
//! `docker save` on Docker 20.10 writes the whole image to a temp dir before
//! its first byte: 1.5 s for a 235 MB image, even when one small layer is
//! all the far side lacks. `docker push`, on the other hand, asks the
//! registry about each layer it has pushed there before and compresses only
//! the rest. So dos keeps a *capture registry* on a fixed loopback port
//! (`DOS_CAPTURE_PORT`, default [`DEFAULT_PORT`]): the daemon pushes the
//! image into it, dos answers "already here" for the layers the far side
//! has, and the layers it lacks arrive (gzip, decompressed and checked
//! here) to be sent on like any other.
//!
//! The registry stores nothing. Its answers come from [`known`]: what this
//! daemon pushed to it before. The first push of a layer therefore costs a
//! gzip pass, which is slower than `docker save` on a fast link; so dos
//! uses `docker save` for images mostly new to the far side, and teaches the
//! daemon (a discarding push, [`Session::paced`]) while a slow link, not the
//! CPU, is what a transfer waits for.
//!
//! - [`known`]: the per-daemon record of pushed layers.
//! - [`server`]: the registry's HTTP side.

pub mod known;
pub mod server;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Credentials;
use crate::docker::Daemon;
use crate::http::serve_listener;
pub use known::Known;
pub use server::Captured;
use server::Shared;

/// The capture registry's port on 127.0.0.1. It must stay the same from
/// run to run: the daemon's memory of pushed layers is per registry address.
pub const DEFAULT_PORT: u16 = 27431;

/// The one repository pushed to (the daemon's memory is also per repository).
const REPOSITORY: &str = "dos-capture";

/// Use the capture path when the far side lacks at most this share of the
/// image, plus [`SMALL`]: gzip in the daemon runs at ~17 MB/s here, `docker
/// save` at ~110 MB/s after ~0.2 s of setup, so capture wins below about
/// 3.4 MB + 1/6 of the image.
const SHARE: u64 = 6;
const SMALL: u64 = 3_500_000;

/// The daemon's gzip rate, conservatively, for deciding when to teach it.
const GZIP_RATE: f64 = 15e6;

/// When to teach the daemon an image it hasn't pushed here
/// (`DOS_CAPTURE_SEED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seed {
    /// While a transfer waits for a slow link (the default).
    Auto,
    /// On every `docker save` transfer, waiting for it at the end (for a
    /// machine with CPU to spare, or a fast link used for later updates).
    Always,
    Never,
}

/// What the caller knows of the image.
pub struct Image {
    pub id: String,
    pub diff_ids: Vec<String>,
    /// Total uncompressed size (the daemon's `Size`).
    pub size: u64,
}

/// Where the capture registry can run for this daemon, and what it knows.
pub struct Session {
    daemon: Daemon,
    image: Image,
    port: u16,
    known: Known,
    listener: Option<TcpListener>,
    run: Option<Run>,
    seed_mode: Seed,
}

/// One push into the capture registry.
struct Run {
    stop: CancellationToken,
    shared: Arc<Shared>,
    skip: watch::Sender<Option<HashSet<String>>>,
    push: JoinHandle<()>,
    rx: Option<mpsc::UnboundedReceiver<Captured>>,
    name: String,
}

impl Session {
    /// A session if capture can work here: the port is free, and the daemon
    /// is on this machine (it must reach our 127.0.0.1).
    pub async fn open(daemon: &Daemon, image: Image) -> Option<Session> {
        let port = crate::settings::capture_port(DEFAULT_PORT)?;
        let seed_mode = match crate::settings::capture_seed() {
            "always" => Seed::Always,
            "never" => Seed::Never,
            _ => Seed::Auto,
        };
        if !on_this_host(&daemon.host) {
            return None;
        }
        let dir = crate::settings::cache_dir()?.join("capture");
        let id = daemon.api.info().await.ok()?.id?;
        let listener = match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!("capture registry: 127.0.0.1:{port}: {e}; using docker save");
                return None;
            }
        };
        Some(Session {
            daemon: daemon.clone(),
            known: Known::load(&dir, &id, port),
            image,
            port,
            listener: Some(listener),
            run: None,
            seed_mode,
        })
    }

    /// Raw bytes of these layers the daemon has pushed here (as recorded).
    fn known_raw(&self, layers: &[String]) -> u64 {
        layers
            .iter()
            .filter_map(|d| self.known.get(d))
            .map(|b| b.raw)
            .sum()
    }

    /// Raw bytes of the image whose layers the daemon has not pushed here.
    fn unknown_bytes(&self) -> u64 {
        let layers = &self.image.diff_ids;
        if layers.iter().all(|d| self.known.get(d).is_some()) {
            0
        } else {
            self.image.size.saturating_sub(self.known_raw(layers))
        }
    }

    fn small(&self, bytes: u64) -> bool {
        bytes <= SMALL + self.image.size / SHARE
    }

    /// Before the far side answers: if this image is mostly known, start
    /// the push now (new layers upload while ssh connects). Returns whether
    /// it did.
    pub fn start_early(&mut self) -> bool {
        if self.small(self.unknown_bytes()) {
            self.start(true);
            return true;
        }
        false
    }

    /// Once the far side has the first `have` layers: will capture be faster
    /// than `docker save`? Every layer it has must be known here (else the
    /// daemon would compress it for nothing), and what it lacks small.
    pub fn worth_it(&self, have: usize) -> bool {
        let present = &self.image.diff_ids[..have];
        present.iter().all(|d| self.known.get(d).is_some())
            && self.small(self.image.size.saturating_sub(self.known_raw(present)))
    }

    /// Read the layers the far side lacks through the capture registry:
    /// what the push hands over. `present`: the layers the far side has.
    pub fn capture(
        &mut self,
        present: HashSet<String>,
    ) -> Option<mpsc::UnboundedReceiver<Captured>> {
        if self.run.is_none() {
            self.start(true);
        }
        self.decide(present);
        self.run.as_mut()?.rx.take()
    }

    /// The transfer reads the image with `docker save` instead. A push
    /// started early is left to finish, learning; else the daemon is taught
    /// the image now (`DOS_CAPTURE_SEED=always`), or the caller is asked to
    /// report the transfer's pace to [`Session::paced`] (returns true).
    pub fn saving(&mut self) -> bool {
        if self.run.is_some() {
            self.decide(self.image.diff_ids.iter().cloned().collect());
            drop(self.run.as_mut().and_then(|r| r.rx.take()));
            return false;
        }
        if self.seed_mode == Seed::Never || self.unknown_bytes() == 0 {
            return false;
        }
        if self.seed_mode == Seed::Always {
            self.seed();
            return false;
        }
        true
    }

    /// The `docker save` transfer has read `read` bytes of missing layers
    /// in `secs`: once the link proves slow enough that the daemon can learn
    /// the image before the transfer ends, teach it. Returns whether to keep
    /// reporting.
    pub fn paced(&mut self, secs: f64, read: u64) -> bool {
        if secs < 2.0 || read == 0 {
            return true;
        }
        let rate = read as f64 / secs;
        let left = self.image.size.saturating_sub(read) as f64 / rate;
        if left >= self.unknown_bytes() as f64 / GZIP_RATE {
            tracing::debug!(
                "the link is slow ({:.1} MB/s): teaching the daemon this image meanwhile",
                rate / 1e6
            );
            self.seed();
            return false;
        }
        left >= 1.0
    }

    /// Start the daemon's push into the capture registry. `keep`: hand over
    /// the uploaded content (else only learn from it). Existence checks wait
    /// until the caller decides what may be skipped.
    fn start(&mut self, keep: bool) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let creds = Credentials::generate("dos-capture");
        let (skip_tx, skip_rx) = watch::channel(None);
        let (tx, rx) = mpsc::unbounded_channel();
        let known: HashMap<String, (String, u64)> = self
            .image
            .diff_ids
            .iter()
            .filter_map(|d| {
                self.known
                    .get(d)
                    .map(|b| (b.digest.clone(), (d.clone(), b.size)))
            })
            .collect();
        // The top layer is the one an update changes: upload it while ssh
        // connects rather than after the far side answers, if it is small.
        let eager = self
            .image
            .diff_ids
            .last()
            .filter(|d| keep && self.known.get(d).is_some_and(|b| b.raw <= SMALL))
            .into_iter()
            .cloned()
            .collect();
        let shared = Arc::new(Shared::new(
            creds.clone(),
            known,
            skip_rx,
            eager,
            keep,
            self.image.diff_ids.clone(),
            tx.clone(),
        ));
        let stop = CancellationToken::new();
        let s = shared.clone();
        serve_listener(listener, stop.clone(), move |req| {
            server::handle(s.clone(), req)
        });
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port)).to_string();
        let repo = format!("{addr}/{REPOSITORY}");
        let mut raw = [0u8; 8];
        rand::rng().fill_bytes(&mut raw);
        let tag = hex::encode(raw);
        let daemon = self.daemon.clone();
        let image_id = self.image.id.clone();
        let (r, t) = (repo.clone(), tag.clone());
        crate::leftovers::watch(&daemon, &format!("{addr}/"));
        let push = tokio::spawn(async move {
            let pushed = async {
                daemon.tag(&image_id, &r, &t).await?;
                daemon.push(&r, &t, creds.docker(&addr)).await
            }
            .await;
            if let Err(e) = &pushed {
                tracing::debug!("capture push: {e:#}");
            }
            let _ = tx.send(Captured::Ended(pushed.err().map(|e| format!("{e:#}"))));
        });
        self.run = Some(Run {
            stop,
            shared,
            skip: skip_tx,
            push,
            rx: Some(rx),
            name: format!("{repo}:{tag}"),
        });
    }

    /// The layers the daemon may skip (it will be told they are here).
    fn decide(&self, skip: HashSet<String>) {
        if let Some(r) = &self.run {
            let _ = r.skip.send(Some(skip));
        }
    }

    /// Teach the daemon this image: a push whose content is hashed and
    /// dropped; every layer already known is skipped.
    fn seed(&mut self) {
        self.start(false);
        self.decide(self.image.diff_ids.iter().cloned().collect());
    }

    /// Stop any push (waiting up to `grace` for one near its end), remove
    /// its names, and save what was learned.
    pub async fn finish(mut self, grace: Duration) {
        let Some(run) = self.run.take() else {
            return;
        };
        // Worth waiting for only a push that was told what to skip and
        // hands over content (a capture near its end, not a seeding one).
        let decided = run.skip.borrow().is_some();
        let grace = if !decided {
            Duration::ZERO
        } else if run.shared.keep_files {
            grace
        } else if self.seed_mode == Seed::Always {
            Duration::from_secs(600)
        } else {
            Duration::ZERO
        };
        let mut push = run.push;
        if tokio::time::timeout(grace, &mut push).await.is_err() {
            push.abort();
        }
        run.stop.cancel();
        let prefix = format!("127.0.0.1:{}/", self.port);
        if let Err(e) = self.daemon.untag(&run.name).await {
            tracing::debug!("{e:#}");
        }
        match self.daemon.untag_all_under(&prefix).await {
            Ok(()) => crate::leftovers::unwatch(&prefix),
            Err(e) => tracing::warn!("{e:#}"),
        }
        let learned = std::mem::take(&mut *run.shared.learned.lock().unwrap());
        if learned.is_empty() {
            return;
        }
        for (diff_id, blob) in learned {
            self.known.insert(&diff_id, blob);
        }
        if let Err(e) = self.known.save() {
            tracing::debug!("saving what the capture registry learned: {e}");
        }
    }
}

/// A daemon reached through a unix socket or loopback TCP runs on this
/// machine, so it can reach our 127.0.0.1 (a daemon in another network
/// namespace makes the push fail, and dos falls back to `docker save`).
pub(crate) fn on_this_host(host: &str) -> bool {
    host.starts_with("unix://")
        || [
            "tcp://127.0.0.1:",
            "tcp://localhost:",
            "http://127.0.0.1:",
            "http://localhost:",
        ]
        .iter()
        .any(|p| host.starts_with(p))
}
