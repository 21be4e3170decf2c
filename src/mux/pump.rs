//! The two pumps between a stream and its endpoint, and a stream's reset.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{Inbound, Shared, CHUNK};
use crate::protocol::frame::{Frame, Kind, MAX_PAYLOAD};

/// Endpoint → peer.
pub(super) async fn up<R: AsyncRead + Unpin>(
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
pub(super) async fn down<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    id: u32,
    mut wr: W,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
    unacked: Arc<AtomicU32>,
    cancel: CancellationToken,
) {
    while let Some(item) = inbound.recv().await {
        match item {
            Inbound::Data(held) => {
                let bytes = &held.bytes;
                if let Err(e) = wr.write_all(bytes).await {
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

pub(super) async fn reset(shared: &Arc<Shared>, id: u32, why: &str) {
    if let Some(slot) = shared.streams.lock().unwrap().remove(&id) {
        slot.credit.close();
        slot.cancel.cancel();
    }
    shared
        .send(Frame::new(Kind::Reset, id, why.as_bytes().to_vec()))
        .await;
}
