//! Names a run gives a daemon only for a moment: a relay's, a probe's or a
//! capture's `127.0.0.1:PORT/…`. The code that makes one removes it on
//! every path it controls; a signal ends that code wherever it is, so each
//! such name's prefix is also written here first, and [`clear`] removes
//! whatever is still under a prefix once the run has been interrupted.
//!
//! Process-wide on purpose: the names are made deep inside the probe, the
//! registry push and the relay pull, and the interruption is handled at the
//! top of a command; one list between them beats a handle threaded through
//! every call in between.

use std::sync::Mutex;

use crate::docker::Daemon;

static WATCHED: Mutex<Vec<(Daemon, String)>> = Mutex::new(Vec::new());

/// Names under `prefix` on `daemon` may appear from now on.
pub fn watch(daemon: &Daemon, prefix: &str) {
    let mut w = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
    w.push((daemon.clone(), prefix.to_string()));
}

/// The names under `prefix` are gone (removed by the code that made them).
pub fn unwatch(prefix: &str) {
    let mut w = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
    w.retain(|(_, p)| p != prefix);
}

/// Remove every name still under a watched prefix.
pub async fn clear() {
    let watched = std::mem::take(&mut *WATCHED.lock().unwrap_or_else(|e| e.into_inner()));
    for (daemon, prefix) in watched {
        if let Err(e) = daemon.untag_all_under(&prefix).await {
            tracing::warn!("dos: removing the names under {prefix}: {e:#}");
        }
    }
}
