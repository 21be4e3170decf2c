//! The far engine's load in segments, so that it applies the bottom layers
//! while the next ones arrive.
//!
//! One load at the end applies every layer after the last byte: on a slow
//! link the engine waits, then works while the link is idle. So the
//! archive is cut into segments. Each streams into a load of its own as
//! its layers arrive. Once the layers received make a run from the bottom
//! of at least [`SEGMENT`] bytes, and more are to come, that run is closed
//! as an image of dos's: its archive is finished with a config that names
//! just those layers, and the engine applies them while the next
//! segment's layers stream into the next load. A segment's load builds on
//! the one before it (the engine skips the layers it holds, as in any
//! partial load), so a segment is finished only once the load before it
//! has ended. The last segment carries the image's own config and
//! manifest, as a load in one piece would.
//!
//! A segment's image is untagged, labelled `dos.partial`, and removed once
//! the image is loaded or the transfer fails ([`Partials`]); until then it
//! is watched as a leftover, so an interrupted run removes it too.

use std::io;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::archive::Files;
use crate::docker::Daemon;
use crate::tarstream;

/// Raw layer bytes a segment holds at least before it is closed early:
/// each segment costs the engine a load of its own.
pub const SEGMENT: u64 = 16 << 20;

/// The label on a segment's image: the image it is part of.
pub const PARTIAL_LABEL: &str = "dos.partial";

type Chunks = mpsc::Receiver<io::Result<Bytes>>;

/// Starts a load reading an archive from a channel (the daemon's, or a
/// test's collector).
pub(super) type Start = Box<dyn Fn(Chunks) -> JoinHandle<Result<()>> + Send + Sync>;

/// The loads of one transfer.
pub(super) struct Loads {
    start: Start,
    open: Option<Open>,
    /// The load of the segment closed last, maybe still applying.
    applying: Option<JoinHandle<Result<()>>>,
    /// Raw layer bytes in the open segment, and how many close it early.
    bytes: u64,
    segment: u64,
    /// Segments closed.
    pub(super) partials: Partials,
}

/// The segment being streamed.
struct Open {
    tx: mpsc::Sender<io::Result<Bytes>>,
    load: JoinHandle<Result<()>>,
}

impl Loads {
    pub(super) fn new(start: Start, partials: Partials, segment: u64) -> Loads {
        Loads {
            start,
            open: None,
            applying: None,
            bytes: 0,
            segment,
            partials,
        }
    }

    /// Loads into `daemon`.
    pub(super) fn into(daemon: &Daemon) -> Loads {
        let d = daemon.clone();
        let start: Start = Box::new(move |rx: Chunks| {
            let d = d.clone();
            tokio::spawn(async move {
                let body = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|x| (x, rx))
                });
                d.load(body).await
            })
        });
        Loads::new(start, Partials::on(daemon), SEGMENT)
    }

    /// The next bytes of the open segment's archive (opening one).
    pub(super) async fn send(&mut self, b: Bytes) -> Result<()> {
        let open = match &mut self.open {
            Some(o) => o,
            None => {
                let (tx, rx) = mpsc::channel(8);
                let load = (self.start)(rx);
                self.open.insert(Open { tx, load })
            }
        };
        if open.tx.send(Ok(b)).await.is_ok() {
            return Ok(());
        }
        // The load stopped reading: it failed; say why.
        let open = self.open.take().expect("open");
        match open.load.await {
            Ok(Err(e)) => Err(e),
            _ => Err(anyhow!("docker load stopped reading")),
        }
    }

    /// A layer of `len` raw bytes has gone into the open segment.
    pub(super) fn layer_sent(&mut self, len: u64) {
        self.bytes += len;
    }

    /// The open segment is big enough to close early.
    pub(super) fn full(&self) -> bool {
        self.bytes >= self.segment
    }

    /// Finish the open segment with `files` (its config and manifest) once
    /// the load before it has ended; `partial` is the ID of the image it
    /// makes, for a segment closed early.
    pub(super) async fn close(&mut self, files: Files, partial: Option<String>) -> Result<()> {
        self.applied().await?;
        if let Some(id) = partial {
            self.partials.add(id);
        }
        for (name, body) in files {
            for chunk in tarstream::file_chunks(&name, body)? {
                self.send(chunk).await?;
            }
        }
        self.send(Bytes::copy_from_slice(&tarstream::trailer()))
            .await?;
        let open = self.open.take().expect("sent to");
        self.applying = Some(open.load);
        self.bytes = 0;
        Ok(())
    }

    /// Wait for the load of the segment closed last.
    pub(super) async fn applied(&mut self) -> Result<()> {
        match self.applying.take() {
            Some(load) => load.await.map_err(|e| anyhow!("docker load task: {e}"))?,
            None => Ok(()),
        }
    }

    /// The stream failed with `e`: the open segment's load is made to fail
    /// rather than finish on a partial archive, and every load is waited
    /// for (so that what they made can be removed).
    pub(super) async fn abort(&mut self, e: &anyhow::Error) {
        if let Some(open) = self.open.take() {
            let _ = open.tx.send(Err(io::Error::other(e.to_string()))).await;
            drop(open.tx);
            let _ = open.load.await;
        }
        let _ = self.applied().await;
    }
}

/// The images of the segments closed early: removed by [`Partials::remove`]
/// and, if the run is interrupted first, by [`crate::leftovers`].
#[derive(Default)]
pub struct Partials {
    daemon: Option<Daemon>,
    ids: Vec<String>,
}

impl Partials {
    fn on(daemon: &Daemon) -> Partials {
        Partials {
            daemon: Some(daemon.clone()),
            ids: Vec::new(),
        }
    }

    fn add(&mut self, id: String) {
        if let Some(d) = &self.daemon {
            crate::leftovers::watch_image(d, &id);
        }
        self.ids.push(id);
    }

    pub fn count(&self) -> usize {
        self.ids.len()
    }

    /// Remove them, top first (a layer stays while an image holds it). A
    /// failure is logged: the image itself is loaded or the transfer has
    /// already failed.
    pub async fn remove(mut self) {
        let Some(d) = self.daemon.take() else { return };
        for id in self.ids.drain(..).rev() {
            match d.remove_image(&id).await {
                Ok(()) => crate::leftovers::unwatch_image(&id),
                Err(e) => tracing::warn!("dos: removing the partial image {id}: {e:#}"),
            }
        }
    }
}

/// The config of a segment's image: the image's platform, its first
/// layers, and the label naming the image (`image_id`) it is part of.
pub(super) fn partial_config(
    config: &[u8],
    image_id: &str,
    diff_ids: &[String],
) -> Result<Vec<u8>> {
    let full: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| anyhow!("the image config is not JSON: {e}"))?;
    let mut c = serde_json::Map::new();
    for key in ["architecture", "os", "os.version", "variant"] {
        if let Some(v) = full.get(key).filter(|v| v.is_string()) {
            c.insert(key.into(), v.clone());
        }
    }
    if !c.contains_key("architecture") || !c.contains_key("os") {
        bail!("the image config names no platform");
    }
    c.insert(
        "config".into(),
        serde_json::json!({ "Labels": { PARTIAL_LABEL: image_id } }),
    );
    c.insert(
        "rootfs".into(),
        serde_json::json!({ "type": "layers", "diff_ids": diff_ids }),
    );
    Ok(serde_json::to_vec(&serde_json::Value::Object(c))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_config_names_the_platform_the_layers_and_the_image() {
        let full = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]},"history":[{}],"rootfs":{"type":"layers","diff_ids":["sha256:a","sha256:b"]}}"#;
        let c = partial_config(full, "sha256:img", &["sha256:a".to_string()]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&c).unwrap();
        assert_eq!(v["rootfs"]["diff_ids"], serde_json::json!(["sha256:a"]));
        assert_eq!(v["config"]["Labels"][PARTIAL_LABEL], "sha256:img");
        assert_eq!(v["architecture"], "amd64");
        assert!(v.get("history").is_none());
        assert!(partial_config(br#"{"rootfs":{}}"#, "sha256:img", &[]).is_err());
    }
}
