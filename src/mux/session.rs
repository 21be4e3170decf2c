//! A running session, as its owner holds it.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Event, Mux, MuxError};

/// A running session: the handle to its streams, the events its owner
/// must handle, and the reader whose end says how the session ended.
pub struct Session {
    pub mux: Mux,
    pub(super) events: mpsc::Receiver<Event>,
    pub(super) reader: Option<JoinHandle<Result<(), MuxError>>>,
}

impl Session {
    /// The next event; None once the session has ended.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// An event already received, if any (never waits).
    pub fn try_next(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// How the transport ended, if it has: the first of the reader and the
    /// writer to see it says why.
    pub fn ended(&self) -> Option<String> {
        self.mux.shared.end.get().cloned()
    }

    /// Wait for the reader to end, and say why the session ended.
    pub async fn end(&mut self) -> String {
        if let Some(r) = self.reader.take() {
            if let Err(e) = r.await {
                let _ = self
                    .mux
                    .shared
                    .end
                    .set(format!("the session's reader failed: {e}"));
            }
        }
        self.ended()
            .unwrap_or_else(|| "the session ended".to_string())
    }
}
