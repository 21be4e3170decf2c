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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::protocol::frame::{Frame, FrameError, Kind, MAX_PAYLOAD};

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
    Data(Bytes),
    Eof,
    Reset(String),
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
    wire_out: AtomicU64,
    wire_in: AtomicU64,
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
/// past the handshake. Returns the handle, the events the owner must handle,
/// and the reader task, whose result says how the session ended.
pub fn start<R, W>(
    reader: R,
    leftover: BytesMut,
    writer: W,
    side: Side,
    liveness: Liveness,
) -> (
    Mux,
    mpsc::UnboundedReceiver<Event>,
    JoinHandle<Result<(), MuxError>>,
)
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
        wire_out: AtomicU64::new(0),
        wire_in: AtomicU64::new(0),
    });
    tokio::spawn(write_loop(writer, out_rx, shared.clone()));
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let reader_done = CancellationToken::new();
    if liveness.heartbeat {
        tokio::spawn(heartbeat(Arc::downgrade(&shared), reader_done.clone()));
    }
    let reader_task = tokio::spawn(read_loop(
        reader,
        leftover,
        shared.clone(),
        ev_tx,
        liveness.idle,
        reader_done,
    ));
    (Mux { shared }, ev_rx, reader_task)
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
            let up = pump_up(shared.clone(), id, rd, credit, cancel.clone());
            let down = pump_down(shared.clone(), id, wr, inbound, unacked, cancel);
            tokio::join!(up, down);
            shared.streams.lock().unwrap().remove(&id);
        })
    }

    /// Refuse a stream the peer opened.
    pub async fn reject(&self, stream: MuxStream, why: &str) {
        reset(&self.shared, stream.id, why).await;
    }

    /// Flush everything queued and close the transport's write half.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.out.send(Out::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
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

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<Out>,
    shared: Arc<Shared>,
) {
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut done: Option<oneshot::Sender<()>> = None;
    'outer: while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Batch whatever is already queued into one write.
        while let Some(item) = next.take() {
            match item {
                Out::Frame(f) => f.encode(&mut buf),
                Out::Shutdown(tx) => {
                    done = Some(tx);
                    break;
                }
            }
            if buf.len() >= 256 * 1024 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !buf.is_empty() {
            let n = buf.len() as u64;
            if let Err(e) = async {
                writer.write_all(&buf).await?;
                writer.flush().await
            }
            .await
            {
                tracing::debug!("transport write failed: {e}");
                shared.reset_all("transport closed");
                break 'outer;
            }
            shared.wire_out.fetch_add(n, Ordering::Relaxed);
            buf.clear();
        }
        if done.is_some() {
            break;
        }
    }
    let _ = writer.shutdown().await;
    if let Some(tx) = done {
        let _ = tx.send(());
    }
}

/// Send a `Ping` every [`HEARTBEAT`] until the session is gone. Holds the
/// session weakly so it never keeps a dropped one alive.
async fn heartbeat(shared: Weak<Shared>, reader_done: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = reader_done.cancelled() => return,
        }
        let Some(out) = shared.upgrade().map(|s| s.out.clone()) else {
            return;
        };
        if out
            .send(Out::Frame(Frame::new(Kind::Ping, 0, Bytes::new())))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: R,
    mut buf: BytesMut,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
    idle: Option<Duration>,
    reader_done: CancellationToken,
) -> Result<(), MuxError> {
    let result = async {
        loop {
            while let Some(frame) = Frame::decode(&mut buf)? {
                shared
                    .wire_in
                    .fetch_add(frame.wire_len() as u64, Ordering::Relaxed);
                route(&shared, &events, frame)?;
            }
            let read = reader.read_buf(&mut buf);
            let n = match idle {
                Some(limit) => tokio::time::timeout(limit, read)
                    .await
                    .map_err(|_| MuxError::Idle(limit))??,
                None => read.await?,
            };
            if n == 0 {
                Frame::check_eof(&buf)?;
                return Ok(());
            }
        }
    }
    .await;
    reader_done.cancel();
    shared.reset_all(match &result {
        Ok(()) => "the other side closed the session",
        Err(_) => "session failed",
    });
    result
}

fn route(
    shared: &Arc<Shared>,
    events: &mpsc::UnboundedSender<Event>,
    frame: Frame,
) -> Result<(), MuxError> {
    let id = frame.stream;
    if frame.kind == Kind::Control {
        let _ = events.send(Event::Control(frame.payload));
        return Ok(());
    }
    if frame.kind == Kind::Ping {
        // Its arrival is the point: the reader's idle clock has restarted.
        return Ok(());
    }
    if id == 0 {
        return Err(MuxError::Protocol(format!(
            "{:?} frame on stream 0",
            frame.kind
        )));
    }
    let mut streams = shared.streams.lock().unwrap();
    match frame.kind {
        Kind::Open => {
            if streams.contains_key(&id) {
                return Err(MuxError::Protocol(format!("stream {id} opened twice")));
            }
            if streams.len() >= MAX_STREAMS {
                drop(streams);
                let shared = shared.clone();
                tokio::spawn(async move {
                    shared
                        .send(Frame::new(Kind::Reset, id, &b"too many streams"[..]))
                        .await
                });
                return Ok(());
            }
            drop(streams);
            let stream = shared.register(id);
            let _ = events.send(Event::Open(stream));
        }
        Kind::Data => {
            // Data for a stream we already reset is dropped, not an error:
            // the peer may have sent it before our reset reached it.
            if let Some(slot) = streams.get(&id) {
                let len = frame.payload.len() as u32;
                let total = slot.unacked.fetch_add(len, Ordering::AcqRel) + len;
                if total > WINDOW {
                    return Err(MuxError::Protocol(format!(
                        "stream {id} overran its window ({total} > {WINDOW} bytes)"
                    )));
                }
                let _ = slot.inbound.send(Inbound::Data(frame.payload));
            }
        }
        Kind::Close => {
            if let Some(slot) = streams.get(&id) {
                let _ = slot.inbound.send(Inbound::Eof);
            }
        }
        Kind::Reset => {
            if let Some(slot) = streams.remove(&id) {
                let why = String::from_utf8_lossy(&frame.payload).into_owned();
                let _ = slot.inbound.send(Inbound::Reset(why));
                slot.credit.close();
                slot.cancel.cancel();
            }
        }
        Kind::Window => {
            let credit = frame
                .credit()
                .ok_or_else(|| MuxError::Protocol("window frame without a u32".into()))?;
            if let Some(slot) = streams.get(&id) {
                if slot.credit.available_permits() + credit as usize > WINDOW as usize {
                    return Err(MuxError::Protocol(format!(
                        "stream {id} was granted more than its window"
                    )));
                }
                slot.credit.add_permits(credit as usize);
            }
        }
        Kind::Control | Kind::Ping => unreachable!("handled above"),
    }
    Ok(())
}

/// Endpoint → peer.
async fn pump_up<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    id: u32,
    mut rd: R,
    credit: Arc<Semaphore>,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tokio::select! {
            r = rd.read(&mut buf) => r,
            _ = cancel.cancelled() => return,
        };
        match n {
            Ok(0) => {
                shared.send(Frame::new(Kind::Close, id, Bytes::new())).await;
                return;
            }
            Ok(n) => {
                debug_assert!(n <= MAX_PAYLOAD);
                // Wait for the peer to have room; a closed semaphore means
                // the stream was reset.
                match credit.acquire_many(n as u32).await {
                    Ok(p) => p.forget(),
                    Err(_) => return,
                }
                shared
                    .send(Frame::new(
                        Kind::Data,
                        id,
                        Bytes::copy_from_slice(&buf[..n]),
                    ))
                    .await;
            }
            Err(e) => {
                reset(&shared, id, &format!("read failed: {e}")).await;
                return;
            }
        }
    }
}

/// Peer → endpoint.
async fn pump_down<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    id: u32,
    mut wr: W,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
    unacked: Arc<AtomicU32>,
    cancel: CancellationToken,
) {
    while let Some(item) = inbound.recv().await {
        match item {
            Inbound::Data(bytes) => {
                if let Err(e) = wr.write_all(&bytes).await {
                    reset(&shared, id, &format!("write failed: {e}")).await;
                    cancel.cancel();
                    return;
                }
                let n = bytes.len() as u32;
                unacked.fetch_sub(n, Ordering::AcqRel);
                shared
                    .send(Frame::new(Kind::Window, id, n.to_be_bytes().to_vec()))
                    .await;
            }
            Inbound::Eof => {
                let _ = wr.shutdown().await;
                return;
            }
            Inbound::Reset(why) => {
                tracing::debug!(stream = id, "stream reset: {why}");
                cancel.cancel();
                return;
            }
        }
    }
}

async fn reset(shared: &Arc<Shared>, id: u32, why: &str) {
    if let Some(slot) = shared.streams.lock().unwrap().remove(&id) {
        slot.credit.close();
        slot.cancel.cancel();
    }
    shared
        .send(Frame::new(Kind::Reset, id, why.as_bytes().to_vec()))
        .await;
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
        let (_mux, _events, reader) = start(rd, BytesMut::new(), wr, Side::Dialer, live);
        match reader.await.unwrap() {
            Err(MuxError::Idle(d)) => assert_eq!(d, LIMIT),
            other => panic!("expected an idle error, got {other:?}"),
        }
    }

    /// With heartbeats from the peer, an otherwise silent session lives on.
    #[tokio::test(start_paused = true)]
    async fn heartbeats_keep_a_quiet_session_alive() {
        let (a, b) = tokio::io::duplex(1024);
        let (ard, awr) = tokio::io::split(a);
        let (brd, bwr) = tokio::io::split(b);
        let live = Liveness::with_peer(true, LIMIT);
        let (_ma, _ea, ra) = start(ard, BytesMut::new(), awr, Side::Dialer, live);
        let (mb, _eb, rb) = start(brd, BytesMut::new(), bwr, Side::Listener, live);
        tokio::time::sleep(LIMIT * 10).await;
        assert!(!ra.is_finished() && !rb.is_finished());
        // A clean close is still a clean end.
        mb.shutdown().await;
        assert!(ra.await.unwrap().is_ok());
    }

    /// Without the feature nothing is sent and nothing times out.
    #[tokio::test(start_paused = true)]
    async fn off_means_no_limit() {
        let (a, _b) = tokio::io::duplex(1024);
        let (rd, wr) = tokio::io::split(a);
        let live = Liveness::with_peer(false, LIMIT);
        assert_eq!(live, Liveness::OFF);
        let (_mux, _events, reader) = start(rd, BytesMut::new(), wr, Side::Dialer, live);
        tokio::time::sleep(LIMIT * 10).await;
        assert!(!reader.is_finished());
    }

    #[test]
    fn the_idle_limit_has_a_floor() {
        let live = Liveness::with_peer(true, Duration::from_secs(1));
        assert_eq!(live.idle, Some(MIN_IDLE));
    }
}
