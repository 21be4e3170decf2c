//! The delta plan on the receiving side: say what the engine has, receive
//! the rest, and check what the engine loaded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;

use super::senders_word;
use crate::delta::proof;
use crate::delta::receive::{self, ReceivePlan, SourceManifest};
use crate::delta::spool::{Entry, Spool};
use crate::engine::{Engine, Ids, Loaded};
use crate::error::PeerError;
use crate::mux::{self, Event, Session};
use crate::progress::Board;
use crate::protocol::message::{Message, Resume};
use crate::registry::path::Digest;

/// The image a delta plan offers.
pub(super) struct Offered<'a> {
    /// Its config digest.
    pub config: &'a str,
    pub diff_ids: Vec<String>,
    /// The source's manifest, if the plan carries it.
    pub manifest: Option<String>,
    /// Its config, if the plan carries it (the pusher's proof).
    pub config_json: Option<String>,
    /// The pusher shows progress: say when each layer checks out.
    pub progress: bool,
    /// This side shows progress (a fetch).
    pub board: Option<Arc<Board>>,
    /// The sender tells why it stops (a `dos send`).
    pub tells: bool,
}

/// Receive the layers this engine lacks and load the image; returns it
/// and how many of its layers were here.
pub(super) async fn via_delta(
    session: &mut Session,
    engine: &Engine,
    offered: Offered<'_>,
) -> Result<(Loaded, usize)> {
    let Offered {
        config,
        diff_ids,
        manifest,
        config_json,
        progress,
        board,
        tells,
    } = offered;
    if Digest::parse(config).is_none() || diff_ids.iter().any(|d| Digest::parse(d).is_none()) {
        bail!(PeerError::Refused(
            "the pusher's plan names malformed digests".into()
        ));
    }
    let source = manifest
        .map(|m| {
            SourceManifest::check(m, config, &diff_ids).ok_or_else(|| {
                PeerError::Refused("the pusher's manifest is not one of the image it offers".into())
            })
        })
        .transpose()?;
    let holding = engine
        .holding(
            config,
            &diff_ids,
            source.as_ref().map(SourceManifest::digest).as_deref(),
        )
        .await
        .context("learning what the far engine has")?;
    let mux = session.mux.clone();
    if let Some(loaded) = holding.image {
        // The config in the plan proves the pusher holds the image; a plan
        // without it gets asked, one with a wrong one is refused.
        let proven = match config_json.map(|c| proof::plan(&c, config, &diff_ids)) {
            Some(Err(e)) => bail!(PeerError::Refused(format!("{e:#}"))),
            Some(Ok(())) => true,
            None => false,
        };
        mux.control(
            Message::Have {
                layers: diff_ids.len(),
                image: true,
                resume: Vec::new(),
                sizes: false,
                blobs: false,
                prove: !proven,
            }
            .to_bytes(),
        )
        .await;
        if proven {
            tracing::debug!("the config in the plan proves the pusher holds the image");
            return Ok((loaded, diff_ids.len()));
        }
        let stream = next_stream(session, "its proof").await?;
        let (near, far) = tokio::io::duplex(64 * 1024);
        mux.attach(stream, near);
        proof::check(far, config, &diff_ids)
            .await
            .map_err(|e| PeerError::Refused(format!("{e:#}")))?;
        return Ok((loaded, diff_ids.len()));
    }
    let have = holding.layers;
    // Layers an interrupted transfer left in the spool: held (locked) from
    // now on, and offered so the pusher sends only the rest.
    let spool = Spool::from_env();
    // A layer may be spooled as its tar or as the source's blob.
    let held: HashMap<String, Entry> = spool
        .as_ref()
        .map(|s| {
            (have..diff_ids.len())
                .flat_map(|i| {
                    let blob = source.as_ref().and_then(|m| m.blob(i));
                    [Some(&diff_ids[i]), blob.map(|b| &b.digest)]
                })
                .flatten()
                .filter_map(|name| s.existing(name).map(|e| (name.clone(), e)))
                .collect()
        })
        .unwrap_or_default();
    let resume: Vec<Resume> = held
        .values()
        .map(|e| Resume {
            diff_id: e.diff_id.clone(),
            offset: e.held(),
        })
        .collect();
    // The pusher's display shows the layers; what its user needs from this
    // side is a resume (the far engine is in the pusher's report).
    let receiving = format!(
        "dos: receiving {} of {} layers into {engine}",
        diff_ids.len() - have,
        diff_ids.len()
    );
    if resume.is_empty() {
        tracing::debug!("{receiving}");
    } else {
        tracing::info!(
            "{receiving} ({} bytes of {} of them are in the resume spool)",
            resume.iter().map(|r| r.offset).sum::<u64>(),
            resume.len()
        );
    }
    mux.control(
        Message::Have {
            layers: have,
            image: false,
            resume,
            sizes: holding.needs_sizes,
            blobs: source.is_some() && engine.ids() == Ids::Manifest,
            prove: false,
        }
        .to_bytes(),
    )
    .await;
    let stream = next_stream(session, "the layers").await?;
    let (near, far) = tokio::io::duplex(256 * 1024);
    mux.attach(stream, near);
    // Each layer that checks out is told to the pusher's display, in order
    // and before the outcome.
    // This side's display (a fetch) hears of them too.
    if let Some(b) = &board {
        b.receiving();
        b.far_verifies(true);
        b.layers(&diff_ids, have, &vec![None; diff_ids.len()]);
    }
    let (verified, told) = if progress || board.is_some() {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let m = mux.clone();
        let told = tokio::spawn(async move {
            while let Some(diff_id) = rx.recv().await {
                if let Some(b) = &board {
                    b.verified(&diff_id);
                }
                if progress {
                    m.control(Message::Verified { diff_id }.to_bytes()).await;
                }
            }
            if let Some(b) = &board {
                b.all_sent();
            }
        });
        (Some(tx), Some(told))
    } else {
        (None, None)
    };
    let mut plan = ReceivePlan {
        verified,
        image_id: config.to_string(),
        diff_ids,
        have,
        spool,
        held,
        layout: engine.layout(),
        blobs: holding.held,
        source,
        keep_manifest: engine.ids() == Ids::Manifest,
    };
    let received = receive::receive(&engine.daemon, far, &mut plan).await;
    plan.verified = None;
    if let Some(t) = told {
        let _ = t.await;
    }
    // A sender that tells (a `dos send`) says why its stream broke off.
    let received = match received {
        Err(e) if tells => match senders_last_word(session).await {
            Some(word) => return Err(word),
            None => return Err(e),
        },
        r => r?,
    };
    // Trust the engine's word, not ours: the loaded image must be the one
    // offered, and whole (an incomplete one is removed).
    let loaded = engine
        .verify(received.manifest.as_deref(), config, &plan.diff_ids)
        .await
        .context("checking the image the engine loaded");
    received.partials.remove().await;
    let loaded = loaded?;
    plan.clean_spool();
    Ok((loaded, have))
}

/// What a sender that broke off says, if it does within moments.
async fn senders_last_word(session: &mut Session) -> Option<anyhow::Error> {
    let wait = async {
        loop {
            match session.next().await {
                Some(Event::Control(b)) => {
                    if let Some(e) = Message::from_bytes(&b).ok().as_ref().and_then(senders_word) {
                        return Some(e);
                    }
                }
                Some(Event::Open(_)) => {}
                None => return None,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .ok()
        .flatten()
        .map(anyhow::Error::new)
}

/// The stream the pusher opens next, carrying `what`.
async fn next_stream(session: &mut Session, what: &str) -> Result<mux::MuxStream> {
    match session.next().await {
        Some(Event::Open(s)) => Ok(s),
        Some(Event::Control(b)) => {
            if let Some(e) = Message::from_bytes(&b).ok().as_ref().and_then(senders_word) {
                bail!(e);
            }
            bail!(PeerError::Refused(format!(
                "unexpected message while waiting for {what}: {}",
                String::from_utf8_lossy(&b)
            )))
        }
        None => bail!(
            "the session ended before the pusher sent {what}: {}",
            session.end().await
        ),
    }
}
