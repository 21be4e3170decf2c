//! Ctrl-C and SIGTERM end a transfer cleanly: the work in progress is
//! dropped, then the caller's cleanup (temporary tags, the registry) runs.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

use crate::error::Interrupted;

/// Resolves when SIGINT, SIGTERM or SIGHUP arrives.
pub async fn interrupted() {
    let mut set = Vec::new();
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ] {
        if let Ok(s) = signal(kind) {
            set.push(s);
        }
    }
    if set.is_empty() {
        return std::future::pending().await;
    }
    let waits = set.iter_mut().map(|s| Box::pin(s.recv()));
    futures_util::future::select_all(waits).await;
}

/// Run `fut` unless a signal comes first; then drop it (its transport
/// command is killed with it), remove the temporary names it made
/// ([`crate::leftovers`]) unless a second signal comes, and fail with
/// [`Interrupted`].
pub async fn run_interruptible<T>(
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let r = interruptible(fut).await;
    if r.as_ref().err().is_some_and(|e| e.is::<Interrupted>()) {
        tracing::info!("dos: interrupted; removing temporary names (again to quit at once)");
        tokio::select! {
            _ = tokio::time::timeout(std::time::Duration::from_secs(20), crate::leftovers::clear()) => {}
            () = interrupted() => tracing::info!("dos: interrupted again; some temporary names may be left"),
        }
    }
    r
}

/// Run `fut` unless a signal comes first.
pub async fn interruptible<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::select! {
        r = fut => r,
        _ = interrupted() => Err(Interrupted.into()),
    }
}
