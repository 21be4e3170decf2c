//! Many byte streams over one ordered byte stream (a command's stdio).
//!
//! Each TCP connection the far daemon makes becomes a stream. Streams are
//! independent: a stream may only have [`WINDOW`] bytes in flight before the
//! receiver returns credit, so a slow consumer stalls only its own stream, and
//! memory per stream is bounded by the window whatever the peer does (a peer
//! that overruns its window is a protocol error, not a bigger buffer).
//!
//! Three kinds of task:
//! - one writer owns the transport's write half and drains a bounded queue of
//!   frames, batching what is queued into one write;
//! - one reader (the demultiplexer) owns the read half, decodes frames and
//!   routes them; it never waits on anything but the transport, so one stream
//!   can't block another's delivery;
//! - per stream, two pumps between the stream and its endpoint (a socket, or
//!   an in-memory pipe to an HTTP server);
//! - when both sides speak `heartbeat`, one ticker sending a `Ping` every
//!   [`HEARTBEAT`].
//!
//! Liveness: a link can die without a word (a laptop's Wi-Fi drops, a NAT
//! forgets the connection); ssh then waits for TCP, which can take hours. With
//! heartbeats on, the reader gives up when nothing at all has arrived for the
//! idle limit, so both ends notice within seconds and clean up.
//!
//! Memory the peer controls, and its bound:
//! - data received and not yet written to its endpoint: at most [`WINDOW`]
//!   per stream (overrunning it is a protocol error) and at most
//!   [`MAX_BUFFERED`] for all streams together (past it the reader stops
//!   reading the transport until endpoints take some; if none does within
//!   the idle limit, the session fails). A stream the peer opened and
//!   nobody attached counts too.
//! - events nobody has taken yet: at most [`EVENTS`]; a control message is
//!   at most [`MAX_CONTROL`] bytes. More is a protocol error.
//! - the frame being decoded: at most [`MAX_PAYLOAD`](crate::protocol::frame::MAX_PAYLOAD) plus a header.
//!
//! So a peer can make this side hold about MAX_BUFFERED + EVENTS ×
//! MAX_CONTROL + MAX_PAYLOAD = 29 MiB, whatever it sends.
//!
//! How a session ended is recorded once, by whichever of the reader and the
//! writer sees the transport end first ([`Session::ended`]): an error met
//! elsewhere afterwards (a write into a stream the end reset) is the lost
//! link, not a failure of its own.

mod io;
mod pump;
mod session;

pub use session::Session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::protocol::frame::{Frame, FrameError, Kind};

/// Bytes a stream may have in flight before the receiver returns credit.
/// Large enough to fill a long fat link with a few streams (docker pulls three
/// layers at once), small enough that the worst case (`MAX_STREAMS` full
/// windows) stays a few MiB.
pub const WINDOW: u32 = 4 * 1024 * 1024;

/// Largest data frame we send.
pub const CHUNK: usize = 32 * 1024;

/// Streams open at once; more are reset at birth.
pub const MAX_STREAMS: usize = 64;

/// Frames queued for the writer (bounded: a full queue applies back-pressure).
const QUEUE: usize = 64;

/// Data received on all streams together and not yet written to their
/// endpoints: six full windows. A far daemon pulling through the relay
/// fills about three (its concurrent downloads), a delta one. With the
/// ~25 MiB the process needs anyway, a flood stays under 64 MiB of RSS.
pub const MAX_BUFFERED: u64 = 6 * WINDOW as u64;

/// Events (control messages, streams the peer opened) not yet taken.
pub const EVENTS: usize = 16;

/// The largest control message: a plan names at most 128 layers and a
/// manifest that fits in a hello; an answer, as many descriptors.
pub const MAX_CONTROL: usize = 256 * 1024;

/// How often a heartbeat goes out (when the peer understands them).
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// The shortest idle limit allowed: a few heartbeats must fit in it.
pub const MIN_IDLE: Duration = Duration::from_secs(5);

/// Keep-alive for a session, agreed in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Send a `Ping` every [`HEARTBEAT`] (the peer understands them).
    pub heartbeat: bool,
    /// End the session when nothing arrives for this long (the peer sends
    /// heartbeats, so silence means the link is gone).
    pub idle: Option<Duration>,
}

impl Liveness {
    /// No heartbeats and no idle limit (a peer without the feature).
    pub const OFF: Liveness = Liveness {
        heartbeat: false,
        idle: None,
    };

    /// Heartbeats both ways and an idle limit if the peer speaks them.
    pub fn with_peer(peer_heartbeats: bool, idle: Duration) -> Liveness {
        if peer_heartbeats {
            Liveness {
                heartbeat: true,
                idle: Some(idle.max(MIN_IDLE)),
            }
        } else {
            Liveness::OFF
        }
    }
}

#[derive(Debug, Error)]
pub enum MuxError {
    #[error("bad frame from the other side: {0}")]
    Frame(#[from] FrameError),
    #[error("protocol violation by the other side: {0}")]
    Protocol(String),
    #[error("transport read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("nothing arrived from the other side for {} s: the link seems to be down", .0.as_secs())]
    Idle(Duration),
}

/// Something the owner of the session must handle.
#[derive(Debug)]
pub enum Event {
    /// The peer opened a stream.
    Open(MuxStream),
    /// A control message (stream 0).
    Control(Bytes),
}

enum Out {
    Frame(Frame),
    /// Flush, shut the write half and stop.
    Shutdown(oneshot::Sender<()>),
}

enum Inbound {
    Data(Held),
    Eof,
    Reset(String),
}

/// Received bytes, counted against [`MAX_BUFFERED`] until dropped (written
/// to the endpoint, or thrown away with their stream).
struct Held {
    bytes: Bytes,
    budget: Arc<Budget>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.bytes.len() as u64, Ordering::AcqRel);
        self.budget.freed.notify_one();
    }
}

#[derive(Default)]
struct Budget {
    used: AtomicU64,
    freed: Notify,
}

struct Slot {
    inbound: mpsc::UnboundedSender<Inbound>,
    /// Send credit: one permit per byte we may still send.
    credit: Arc<Semaphore>,
    /// Bytes received and not yet credited back.
    unacked: Arc<AtomicU32>,
    cancel: CancellationToken,
}

struct Shared {
    out: mpsc::Sender<Out>,
    streams: Mutex<HashMap<u32, Slot>>,
    next_id: AtomicU32,
    /// Stream ids the peer allocates are odd (the peer is the dialer) or even.
    peer_parity: u32,
    wire_out: AtomicU64,
    wire_in: AtomicU64,
    budget: Arc<Budget>,
    /// Why the transport ended, as first seen.
    end: OnceLock<String>,
    /// Wakes [`Mux::closed`] once `end` is set.
    end_seen: Notify,
}

/// A handle to a running session. Cheap to clone.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
}

/// One stream, not yet attached to an endpoint.
pub struct MuxStream {
    id: u32,
    inbound: mpsc::UnboundedReceiver<Inbound>,
    credit: Arc<Semaphore>,
    unacked: Arc<AtomicU32>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxStream").field("id", &self.id).finish()
    }
}

/// Which ids this side allocates, so both sides can open streams.
#[derive(Clone, Copy)]
pub enum Side {
    /// Odd ids.
    Dialer,
    /// Even ids.
    Listener,
}

/// Start a session over a transport. `leftover` holds bytes already read
/// past the handshake.
pub fn start<R, W>(
    reader: R,
    leftover: BytesMut,
    writer: W,
    side: Side,
    liveness: Liveness,
) -> Session
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    let shared = Arc::new(Shared {
        out: out_tx,
        streams: Mutex::new(HashMap::new()),
        next_id: AtomicU32::new(match side {
            Side::Dialer => 1,
            Side::Listener => 2,
        }),
        peer_parity: match side {
            Side::Dialer => 0,
            Side::Listener => 1,
        },
        wire_out: AtomicU64::new(0),
        wire_in: AtomicU64::new(0),
        budget: Arc::default(),
        end: OnceLock::new(),
        end_seen: Notify::new(),
    });
    tokio::spawn(io::write_loop(writer, out_rx, shared.clone()));
    let (ev_tx, ev_rx) = mpsc::channel(EVENTS);
    let reader_done = CancellationToken::new();
    if liveness.heartbeat {
        tokio::spawn(io::heartbeat(Arc::downgrade(&shared), reader_done.clone()));
    }
    let reader_task = tokio::spawn(io::read_loop(
        reader,
        leftover,
        shared.clone(),
        ev_tx,
        liveness.idle,
        reader_done,
    ));
    Session {
        mux: Mux { shared },
        events: ev_rx,
        reader: Some(reader_task),
    }
}

impl Mux {
    /// Open a new stream to the peer.
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        if self.shared.streams.lock().unwrap().len() >= MAX_STREAMS {
            return Err(MuxError::Protocol(format!(
                "more than {MAX_STREAMS} streams open"
            )));
        }
        let id = self.shared.next_id.fetch_add(2, Ordering::Relaxed);
        let stream = self.shared.register(id);
        self.send(Frame::new(Kind::Open, id, Bytes::new())).await;
        Ok(stream)
    }

    /// Send a control message.
    pub async fn control(&self, payload: Vec<u8>) {
        self.send(Frame::new(Kind::Control, 0, payload)).await;
    }

    /// Pump bytes between a stream and an endpoint until both directions end.
    pub fn attach<E>(&self, stream: MuxStream, endpoint: E) -> JoinHandle<()>
    where
        E: AsyncRead + AsyncWrite + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let id = stream.id;
            let (rd, wr) = tokio::io::split(endpoint);
            let MuxStream {
                inbound,
                credit,
                unacked,
                cancel,
                ..
            } = stream;
            let up = pump::up(shared.clone(), id, rd, credit, cancel.clone());
            let down = pump::down(shared.clone(), id, wr, inbound, unacked, cancel);
            tokio::join!(up, down);
            shared.streams.lock().unwrap().remove(&id);
        })
    }

    /// Refuse a stream the peer opened.
    pub async fn reject(&self, stream: MuxStream, why: &str) {
        pump::reset(&self.shared, stream.id, why).await;
    }

    /// Flush everything queued and close the transport's write half.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.out.send(Out::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Resolves with why the transport ended, once it has: for work that
    /// waits on something else (a daemon's pull) and must stop with it.
    pub async fn closed(&self) -> String {
        loop {
            let seen = self.shared.end_seen.notified();
            if let Some(why) = self.shared.end.get() {
                return why.clone();
            }
            seen.await;
        }
    }

    /// Bytes written to / read from the transport so far.
    pub fn wire_bytes(&self) -> (u64, u64) {
        (
            self.shared.wire_out.load(Ordering::Relaxed),
            self.shared.wire_in.load(Ordering::Relaxed),
        )
    }

    async fn send(&self, f: Frame) {
        self.shared.send(f).await
    }
}

impl Shared {
    /// Record why the transport ended, unless that is known already.
    fn ended(&self, why: impl Into<String>) {
        let _ = self.end.set(why.into());
        self.end_seen.notify_waiters();
    }

    async fn send(&self, f: Frame) {
        // A closed queue means the writer died; the reader will report why.
        let _ = self.out.send(Out::Frame(f)).await;
    }

    fn register(&self, id: u32) -> MuxStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let credit = Arc::new(Semaphore::new(WINDOW as usize));
        let unacked = Arc::new(AtomicU32::new(0));
        let cancel = CancellationToken::new();
        self.streams.lock().unwrap().insert(
            id,
            Slot {
                inbound: tx,
                credit: credit.clone(),
                unacked: unacked.clone(),
                cancel: cancel.clone(),
            },
        );
        MuxStream {
            id,
            inbound: rx,
            credit,
            unacked,
            cancel,
        }
    }

    /// End every stream: the transport is gone.
    fn reset_all(&self, why: &str) {
        for (_, slot) in self.streams.lock().unwrap().drain() {
            let _ = slot.inbound.send(Inbound::Reset(why.to_string()));
            slot.credit.close();
            slot.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(5);

    /// A session whose peer never says anything ends with `Idle` once the
    /// limit passes (time is simulated: the test takes no real 5 s).
    #[tokio::test(start_paused = true)]
    async fn silence_ends_the_session() {
        let (a, _b) = tokio::io::duplex(1024);
        let (rd, wr) = tokio::io::split(a);
        let live = Liveness::with_peer(true, LIMIT);
        let mut s = start(rd, BytesMut::new(), wr, Side::Dialer, live);
        assert_eq!(s.end().await, MuxError::Idle(LIMIT).to_string());
    }

    /// With heartbeats from the peer, an otherwise silent session lives on.
    #[tokio::test(start_paused = true)]
    async fn heartbeats_keep_a_quiet_session_alive() {
        let (a, b) = tokio::io::duplex(1024);
        let (ard, awr) = tokio::io::split(a);
        let (brd, bwr) = tokio::io::split(b);
        let live = Liveness::with_peer(true, LIMIT);
        let mut sa = start(ard, BytesMut::new(), awr, Side::Dialer, live);
        let sb = start(brd, BytesMut::new(), bwr, Side::Listener, live);
        tokio::time::sleep(LIMIT * 10).await;
        assert!(sa.ended().is_none() && sb.ended().is_none());
        // A clean close is still a clean end.
        sb.mux.shutdown().await;
        assert_eq!(sa.end().await, "the other side closed the stream");
    }

    /// Without the feature nothing is sent and nothing times out.
    #[tokio::test(start_paused = true)]
    async fn off_means_no_limit() {
        let (a, _b) = tokio::io::duplex(1024);
        let (rd, wr) = tokio::io::split(a);
        let live = Liveness::with_peer(false, LIMIT);
        assert_eq!(live, Liveness::OFF);
        let s = start(rd, BytesMut::new(), wr, Side::Dialer, live);
        tokio::time::sleep(LIMIT * 10).await;
        assert!(s.ended().is_none());
    }

    #[test]
    fn the_idle_limit_has_a_floor() {
        let live = Liveness::with_peer(true, Duration::from_secs(1));
        assert_eq!(live.idle, Some(MIN_IDLE));
    }
}
