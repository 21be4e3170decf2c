//! Names a run gives a daemon only for a moment: a relay's, a probe's or a
//! capture's `127.0.0.1:PORT/…`, and the images of a segmented load. The
//! code that makes one removes it on every path it controls; a signal ends
//! that code wherever it is, so each such name's prefix (or image) is also
//! written here first, and [`clear`] removes whatever is still there once
//! the run has been interrupted.
//!
//! Process-wide on purpose: the names are made deep inside the probe, the
//! registry push and the relay pull, and the interruption is handled at the
//! top of a command; one list between them beats a handle threaded through
//! every call in between.

use std::sync::Mutex;

use crate::docker::Daemon;

#[derive(PartialEq)]
enum Left {
    /// Every name under a prefix.
    Names(String),
    /// An image, by ID.
    Image(String),
}

static WATCHED: Mutex<Vec<(Daemon, Left)>> = Mutex::new(Vec::new());

fn watched() -> std::sync::MutexGuard<'static, Vec<(Daemon, Left)>> {
    WATCHED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Names under `prefix` on `daemon` may appear from now on.
pub fn watch(daemon: &Daemon, prefix: &str) {
    watched().push((daemon.clone(), Left::Names(prefix.to_string())));
}

/// The names under `prefix` are gone (removed by the code that made them).
pub fn unwatch(prefix: &str) {
    let gone = Left::Names(prefix.to_string());
    watched().retain(|(_, l)| *l != gone);
}

/// The image `id` on `daemon` is dos's until [`unwatch_image`].
pub fn watch_image(daemon: &Daemon, id: &str) {
    watched().push((daemon.clone(), Left::Image(id.to_string())));
}

/// The image `id` is gone, or the image it was part of holds it.
pub fn unwatch_image(id: &str) {
    let gone = Left::Image(id.to_string());
    watched().retain(|(_, l)| *l != gone);
}

/// Remove every name still under a watched prefix, and every image still
/// watched (the last watched first: a segment's image builds on the one
/// before).
pub async fn clear() {
    let watched = std::mem::take(&mut *watched());
    for (daemon, left) in watched.into_iter().rev() {
        let done = match &left {
            Left::Names(prefix) => daemon.untag_all_under(prefix).await,
            Left::Image(id) => daemon.remove_image(id).await,
        };
        if let Err(e) = done {
            match left {
                Left::Names(p) => tracing::warn!("dos: removing the names under {p}: {e:#}"),
                Left::Image(id) => tracing::warn!("dos: removing the partial image {id}: {e:#}"),
            }
        }
    }
}
