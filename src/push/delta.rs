//! The delta plan from the pushing side: what the plan carries, and the
//! drive from the far side's inventory to its outcome.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::AsyncRead;
use tokio::task::JoinHandle;

use crate::capture;
use crate::delta::content::ContentStore;
use crate::delta::proof;
use crate::delta::send::{self, SendPlan, SendStats};
use crate::delta::shared::Shared;
use crate::delta::store::LocalStore;
use crate::engine::oci;
use crate::error::PeerError;
use crate::mux::{Event, Session};
use crate::progress::Board;
use crate::protocol::handshake::{self, DeltaPlan};
use crate::protocol::message::Message;

use super::outcome::{cut_off, outcome, Reported};
use super::source::Source;

/// Where the delta path reads the missing layers: the daemon's store if it
/// can, else (and should a layer there not be readable) its export.
pub(super) struct Layers<E> {
    pub export: E,
    pub store: Option<LocalStore>,
    /// The containerd content store, where the image's blobs are read as
    /// they are stored.
    pub content: Option<ContentStore>,
    /// A fan-out's layers, compressed once for every host (where the far
    /// side reads concatenated frames).
    pub shared: Option<Arc<Shared>>,
}

/// The source's manifest as the plan carries it: only where it fits the
/// hello with room to spare (a manifest is about 200 bytes a layer, and
/// Docker stacks at most 128), else the layers cross as plain tars.
pub(super) fn plan_manifest(src: &Source) -> Option<String> {
    src.local
        .manifest
        .as_ref()
        .filter(|m| m.len() <= handshake::MAX_HELLO / 2)
        .and_then(|m| String::from_utf8(m.clone()).ok())
}

/// The delta plan: the image, its manifest where the far side may keep it,
/// and its config where it is at hand (read from the local store), so that
/// a far side holding the image needs nothing more ([`proof`]). What does
/// not fit in a hello is left out, the config first.
pub(super) fn delta_plan<E>(src: &Source, layers: &Layers<E>) -> DeltaPlan {
    let config = match (&layers.store, &layers.content) {
        (Some(s), _) => proof::for_plan(s.config()),
        (None, Some(c)) => proof::for_plan(c.config()),
        (None, None) => None,
    };
    let mut plan = DeltaPlan {
        image_id: src.local.config.clone(),
        diff_ids: src.local.diff_ids.clone(),
        manifest: plan_manifest(src),
        config,
    };
    // The rest of the hello is well under 4 KiB.
    let fits = |p: &DeltaPlan| {
        serde_json::to_vec(p).map_or(usize::MAX, |v| v.len()) <= handshake::MAX_HELLO - 4096
    };
    if !fits(&plan) {
        plan.config = None;
    }
    plan
}

/// The layers' sizes as they will be read here, where known before they
/// are: the blobs of the source's manifest, when they cross as they are.
fn sizes_known(src: &Source, blobs: bool) -> Vec<Option<u64>> {
    let descriptors = src
        .local
        .manifest
        .as_deref()
        .filter(|_| blobs && plan_manifest(src).is_some())
        .and_then(oci::Manifest::parse)
        .map(|m| m.layers);
    match descriptors {
        Some(d) => d.iter().map(|l| Some(l.size)).collect(),
        None => vec![None; src.local.diff_ids.len()],
    }
}

/// Delta: wait for the far side's inventory, stream what it lacks, and wait
/// for its outcome.
pub(super) async fn drive_delta(
    session: &mut Session,
    src: &Source,
    layers: Layers<impl AsyncRead + Send + Unpin + 'static>,
    capture: &mut Option<capture::Session>,
    board: &Arc<Board>,
) -> Result<(Reported, Option<SendStats>)> {
    let Layers {
        export,
        mut store,
        mut content,
        shared,
    } = layers;
    let mut export = Some(export);
    let mut sender: Option<JoinHandle<Result<SendStats>>> = None;
    let mut stats = None;
    // Teaching the daemon this image, once the link (not the CPU) proves to
    // be what the transfer waits for: (when sending began, bytes read so far).
    let mut seed_watch: Option<(Instant, Arc<AtomicU64>)> = None;
    let mux = session.mux.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // The sending was cut off: the far side's word (it reset the stream,
    // then says why) or the link's end, which follow within moments, say
    // why.
    let mut send_failed: Option<(anyhow::Error, tokio::time::Instant)> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(send_failed.as_ref().map_or_else(tokio::time::Instant::now, |f| f.1)), if send_failed.is_some() => {
                return Err(send_failed.take().unwrap().0.context("sending the image"));
            }
            _ = tick.tick(), if seed_watch.is_some() => {
                let (since, read) = seed_watch.as_ref().unwrap();
                let c = capture.as_mut().unwrap();
                if !c.paced(since.elapsed().as_secs_f64(), read.load(Ordering::Relaxed)) {
                    seed_watch = None;
                }
            }
            ev = session.next() => match ev {
                Some(Event::Open(stream)) => {
                    // The far side has no business opening streams here.
                    mux.reject(stream, "unexpected stream").await;
                }
                Some(Event::Control(bytes)) => match Message::from_bytes(&bytes) {
                    Ok(Message::Have { layers, image, resume, sizes, blobs, prove }) => {
                        if layers > src.local.diff_ids.len() {
                            bail!(PeerError::FarFailure(format!("the far side claims {layers} layers of {}", src.local.diff_ids.len())));
                        }
                        tracing::info!(
                            "dos: the far side has {layers} of {} layers{}",
                            src.local.diff_ids.len(),
                            if image { " and the image" } else { "" }
                        );
                        let export = export.take().context("the far side asked twice")?;
                        board.layers(&src.local.diff_ids, layers, &sizes_known(src, blobs));
                        if layers == 0 && src.local.manifest.is_none() {
                            board.missing_total(src.local.size);
                        }
                        if image && !prove {
                            drop(export);
                            continue;
                        }
                        let stream = mux.open().await?;
                        let (near, far) = tokio::io::duplex(256 * 1024);
                        mux.attach(stream, near);
                        let resume = resume.into_iter().map(|r| (r.diff_id, r.offset)).collect();
                        let read = board.read.clone();
                        let plan = SendPlan { image_id: src.local.config.clone(), diff_ids: src.local.diff_ids.clone(), have: layers, resume, read: read.clone(), sizes, packed: src.local.packed.clone(), blobs: blobs && plan_manifest(src).is_some(), board: board.clone(), shared: shared.clone() };
                        let present: HashSet<String> = src.local.diff_ids[..layers].iter().cloned().collect();
                        let descriptors = src.local.manifest.as_deref().and_then(oci::Manifest::parse).map(|m| m.layers);
                        let from_content = content.take().zip(descriptors).filter(|_| !sizes);
                        match (store.take(), capture.as_mut()) {
                            _ if from_content.is_some() => {
                                let (c, blobs) = from_content.unwrap();
                                tracing::debug!("reading the missing layers from the containerd content store");
                                sender = Some(tokio::spawn(async move { send::send_content(c, &blobs, &plan, far, move || export).await }));
                            }
                            (Some(store), _) => {
                                tracing::debug!("reading the missing layers from the daemon's store");
                                sender = Some(tokio::spawn(async move { send::send_stored(store, &plan, far, move || export).await }));
                            }
                            (None, Some(c)) if c.worth_it(layers) && !sizes && !image => {
                                tracing::debug!("reading the missing layers through the capture registry");
                                let rx = c.capture(present).context("capture started twice")?;
                                sender = Some(tokio::spawn(async move { send::send_captured(rx, &plan, far, move || export).await }));
                            }
                            (None, c) => {
                                if c.is_some_and(|c| c.saving()) {
                                    seed_watch = Some((Instant::now(), read));
                                }
                                sender = Some(tokio::spawn(async move { send::send(export, &plan, far).await }));
                            }
                        }
                    }
                    Ok(Message::Verified { diff_id }) => board.verified(&diff_id),
                    Ok(Message::Outcome { ok, message, refused, image_id, far }) => {
                        return outcome(ok, message, refused, image_id, far).map(|r| (r, stats));
                    }
                    Ok(other) => bail!(PeerError::FarFailure(format!("unexpected message {other:?}"))),
                    Err(e) => bail!(PeerError::lost(format!("unreadable control message: {e}"))),
                },
                None => bail!(PeerError::lost(session.end().await)),
            },
            r = async { sender.as_mut().unwrap().await }, if sender.is_some() => {
                sender = None;
                match r {
                    Ok(Ok(s)) => {
                        tracing::debug!(?s, "delta sent");
                        board.all_sent();
                        stats = Some(s);
                    }
                    Ok(Err(e)) if cut_off(&e) => {
                        send_failed = Some((e, tokio::time::Instant::now() + Duration::from_secs(5)));
                    }
                    Ok(Err(e)) => return Err(e.context("sending the image")),
                    Err(e) => bail!("the sending task failed: {e}"),
                }
            }
        }
    }
}
