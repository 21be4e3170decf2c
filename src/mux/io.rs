//! The transport's two ends: the writer draining the frame queue, the
//! reader routing frames to streams and events, and the heartbeat.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    Event, Held, Inbound, MuxError, Out, Shared, EVENTS, HEARTBEAT, MAX_BUFFERED, MAX_CONTROL,
    MAX_STREAMS, WINDOW,
};
use crate::protocol::frame::{Frame, Kind};

pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
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
                // Recorded before any stream learns of it: whoever meets
                // the reset next finds the reason already there.
                shared.ended(format!("writing to the transport failed: {e}"));
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
pub(super) async fn heartbeat(shared: Weak<Shared>, reader_done: CancellationToken) {
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

pub(super) async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: R,
    mut buf: BytesMut,
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
    idle: Option<Duration>,
    reader_done: CancellationToken,
) -> Result<(), MuxError> {
    let result: Result<(), MuxError> = async {
        loop {
            while let Some(frame) = Frame::decode(&mut buf)? {
                shared
                    .wire_in
                    .fetch_add(frame.wire_len() as u64, Ordering::Relaxed);
                if frame.kind == Kind::Data {
                    room_for(&shared, frame.payload.len() as u64, idle).await?;
                }
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
    shared.ended(match &result {
        Ok(()) => "the other side closed the stream".to_string(),
        Err(e) => e.to_string(),
    });
    shared.reset_all(match &result {
        Ok(()) => "the other side closed the session",
        Err(_) => "session failed",
    });
    result
}

/// Wait until `len` more received bytes fit in [`MAX_BUFFERED`]: the
/// endpoints write what they hold meanwhile. Endpoints that take nothing
/// for the idle limit (or a minute, without one) end the session.
async fn room_for(shared: &Shared, len: u64, idle: Option<Duration>) -> Result<(), MuxError> {
    let limit = idle.unwrap_or(Duration::from_secs(60));
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let freed = shared.budget.freed.notified();
        if shared.budget.used.load(Ordering::Acquire) + len <= MAX_BUFFERED {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, freed).await.is_err() {
            return Err(MuxError::Protocol(format!(
                "the other side sent more than {MAX_BUFFERED} bytes that this side's endpoints did not take for {} s",
                limit.as_secs()
            )));
        }
    }
}

/// Hand an event to the session's owner; a peer that sends more than the
/// owner takes is violating the protocol (a real peer waits for answers).
fn deliver(events: &mpsc::Sender<Event>, ev: Event) -> Result<(), MuxError> {
    match events.try_send(ev) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => Err(MuxError::Protocol(format!(
            "more than {EVENTS} messages and streams not yet taken"
        ))),
        // The owner is gone: nothing to deliver to.
        Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
    }
}

fn route(shared: &Arc<Shared>, events: &mpsc::Sender<Event>, frame: Frame) -> Result<(), MuxError> {
    let id = frame.stream;
    if frame.kind == Kind::Control {
        if frame.payload.len() > MAX_CONTROL {
            return Err(MuxError::Protocol(format!(
                "a control message of {} bytes (at most {MAX_CONTROL})",
                frame.payload.len()
            )));
        }
        return deliver(events, Event::Control(frame.payload));
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
            if id % 2 != shared.peer_parity {
                return Err(MuxError::Protocol(format!(
                    "stream {id} opened with an id this side allocates"
                )));
            }
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
            deliver(events, Event::Open(stream))?;
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
                shared.budget.used.fetch_add(len as u64, Ordering::AcqRel);
                // A copy of exactly the payload: the frame's bytes share the
                // read buffer's allocation, which is larger, and would stay
                // alive as long as they wait to be written.
                let held = Held {
                    bytes: Bytes::copy_from_slice(&frame.payload),
                    budget: shared.budget.clone(),
                };
                let _ = slot.inbound.send(Inbound::Data(held));
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
