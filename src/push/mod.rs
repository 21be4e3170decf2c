//! `dos push IMAGE CMD...`: start CMD, agree with the far `dos pull` on a
//! plan, and carry it out.
//!
//! - delta (both ends dos, classic image stores): stream only the layers the
//!   far daemon lacks out of the local export;
//! - registry: put the image in a registry on this machine and serve the far
//!   daemon's `docker pull` through the gated relay.
//!
//! Here: the options, the session and its handshake. [`delta`] and
//! [`registry`] drive the two plans; [`outcome`] reads what the far side
//! and the transport said into the user's error.

mod delta;
mod hub;
mod options;
mod outcome;
mod prepare;
mod registry;
mod source;
mod tell;

pub use options::{PushOptions, PushReport, DEFAULT_HELLO, DEFAULT_IDLE};
use prepare::{prepare, Prepared};
use source::Source;
pub use tell::refuse_fetcher;
use tell::tell_fetcher;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::capture;
use crate::docker::Daemon;
use crate::engine::Engine;
use crate::error::{PeerError, SetupError};
use crate::mux::{self, Liveness, Side};
use crate::progress::{Board, Display};
use crate::protocol::handshake::{
    self, HandshakeError, Hello, Role, FEATURE_DELTA, FEATURE_EARLY_PLAN, FEATURE_FRAMES,
    FEATURE_HEARTBEAT, FEATURE_HUB, FEATURE_PROGRESS, FEATURE_TELLS,
};
use crate::protocol::message::Message;
use crate::reference::ImageRef;
pub use crate::setup::Via;
use crate::setup::{Exposure, Plan};
use crate::transport::explain;

use delta::{delta_plan, drive_delta, Layers};
use outcome::{cut_off, is_peer_word, same_image};
use registry::drive_registry;

/// The engine lines of `dos push --explain`: the local engine (asked, as
/// nothing else is started) and how the far one is learnt.
pub async fn explain_engines(opts: &PushOptions) -> String {
    let local = match &opts.docker_host {
        Some(h) => Engine::connect_to(h).await,
        None => Engine::connect().await,
    };
    let here = match local {
        Ok(e) => format!("engine here: {e}; layers are read {}", e.reading()),
        Err(e) => format!("engine here: unknown ({e:#})"),
    };
    format!(
        "{here}\nengine there: the far dos detects its own (Docker's classic or containerd image store, or podman) and names it when the session starts (dos push -v) and in its report\n"
    )
}

/// Push as `opts` says. Ctrl-C, SIGTERM or SIGHUP end it wherever it is;
/// the temporary names made so far are removed before it returns (a second
/// signal cuts that short), and the error is [`crate::error::Interrupted`].
pub async fn push(opts: PushOptions) -> Result<PushReport> {
    crate::signal::run_interruptible(run(opts, Wire::Command)).await
}

/// Send as `opts` says over this process's own stdin/stdout: the far end
/// of a `dos fetch`, whose command started this `dos send`. Failures are
/// told to the fetcher in the session (it prints them); a failure before
/// the session starts is told in one of its own.
pub async fn send_over_stdio(opts: PushOptions) -> Result<PushReport> {
    crate::signal::run_interruptible(run(opts, Wire::Stdio)).await
}

/// Where the session's bytes go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Wire {
    /// The stdin/stdout of `opts.command`, started here.
    Command,
    /// This process's stdin/stdout: the other end started us.
    Stdio,
}

async fn run(opts: PushOptions, wire: Wire) -> Result<PushReport> {
    let prepared = prepare(&opts, wire).await;
    let (prepared, mut transport) = match (prepared, wire) {
        (Ok(p), _) => p,
        (Err(e), Wire::Stdio) => return Err(tell_fetcher(&opts, e).await),
        (Err(e), Wire::Command) => return Err(e),
    };
    let Prepared {
        src,
        daemon,
        layers,
        mut capture,
        plan,
    } = prepared;
    let (reader, writer): (BoxRead, BoxWrite) = match transport.as_mut() {
        Some(t) => (
            Box::new(t.stdout.take().context("transport stdout")?),
            Box::new(t.stdin.take().context("transport stdin")?),
        ),
        None => (crate::stdio::stdin(), Box::new(tokio::io::stdout())),
    };
    let result = session(
        reader,
        writer,
        wire,
        &src,
        &daemon,
        layers,
        &mut capture,
        &opts,
        &plan,
    )
    .await;
    let grace = Duration::from_secs(if result.is_ok() { 2 } else { 0 });
    let Some(mut transport) = transport else {
        if let Some(c) = capture {
            c.finish(grace).await;
        }
        return result;
    };
    // A command that never said hello is stopped at once: it was waited on
    // long enough.
    let silent = matches!(
        result
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<HandshakeError>()),
        Some(HandshakeError::Silent { .. })
    );
    let wait = Duration::from_secs(if silent { 0 } else { 5 });
    let ((status, stderr), ()) = tokio::join!(transport.finish(wait), async {
        if let Some(c) = capture {
            c.finish(grace).await
        }
    });
    let report = result.map_err(|e| explain(e, status, &stderr, &opts.command))?;
    Ok(report)
}

pub(super) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub(super) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

#[allow(clippy::too_many_arguments)]
async fn session(
    mut stdout: BoxRead,
    mut stdin: BoxWrite,
    wire: Wire,
    src: &Source,
    daemon: &Daemon,
    mut layers: Option<Layers<impl AsyncRead + Send + Unpin + 'static>>,
    capture: &mut Option<capture::Session>,
    opts: &PushOptions,
    plan: &Plan,
) -> Result<PushReport> {
    let mut hello = Hello {
        role: Role::Push,
        image: src.image_str.clone(),
        release: env!("CARGO_PKG_VERSION").into(),
        features: if layers.is_some() {
            vec![
                FEATURE_DELTA.into(),
                FEATURE_HEARTBEAT.into(),
                FEATURE_PROGRESS.into(),
            ]
        } else {
            vec![FEATURE_HEARTBEAT.into()]
        },
        delta: layers.as_ref().map(|l| delta_plan(src, l)),
    };
    if wire == Wire::Stdio {
        // Failures are told in the session, not left to a cut link.
        hello.features.push(FEATURE_TELLS.into());
    }
    // Our hello goes first; a far side that isn't dos just won't read it.
    let _ = async {
        stdin.write_all(&handshake::encode(&hello)).await?;
        stdin.flush().await
    }
    .await;
    let (peer, leftover) = handshake::read_within(&mut stdout, opts.hello).await?;
    match peer.role {
        Role::Pull => {}
        Role::Push if wire == Wire::Stdio => {
            bail!(PeerError::Refused("the other side sends too".into()))
        }
        Role::Push => bail!(PeerError::Refused(
            "the far side is a dos send, not a dos pull: it lets images be fetched from it (dos fetch), not pushed to it".into()
        )),
    }
    let wanted = ImageRef::parse(&peer.image)
        .map_err(|e| PeerError::Refused(format!("the far side asked for an invalid image: {e}")))?;
    if !wanted.same_as(&src.image) {
        bail!(PeerError::Refused(format!(
            "this side offers {} but the far side asked for {}",
            src.image_str, peer.image
        )));
    }
    tracing::debug!(release = %peer.release, features = ?peer.features, "far dos ready");
    if let Some(l) = layers.as_mut().filter(|_| !peer.has(FEATURE_FRAMES)) {
        // An older far dos reads one frame: this host's stream is its own.
        l.shared = None;
    }
    let into_hub = peer.has(FEATURE_HUB);
    let use_delta = !into_hub && layers.is_some() && peer.has(FEATURE_DELTA);
    if opts.via == Via::Delta && !use_delta {
        bail!(PeerError::Refused(
            "--via delta: the far dos can't receive a delta (it is an older dos, or its daemon is unreachable)".into()
        ));
    }
    if !use_delta && !into_hub {
        if !plan.registry_allowed {
            bail!(PeerError::Refused(
                "the far dos can't receive a delta and the registry path is not allowed here"
                    .into()
            ));
        }
        if let Exposure::Unreachable(why) = &plan.exposure {
            bail!(SetupError(format!(
                "the far dos can't receive a delta, and the registry path can't work: {why}"
            )));
        }
    }

    let liveness = Liveness::with_peer(peer.has(FEATURE_HEARTBEAT), opts.idle);
    let mut session = mux::start(stdout, leftover, stdin, Side::Listener, liveness);
    let mux = session.mux.clone();
    let started = std::time::Instant::now();
    let m = mux.clone();
    let board = Board::new(Arc::new(move || {
        let (o, i) = m.wire_bytes();
        o + i
    }));
    board.far_verifies(peer.has(FEATURE_PROGRESS));
    if let Some(slot) = &opts.board_slot {
        *slot.lock().unwrap() = Some(board.clone());
    }
    let display = Display::start(board.clone(), opts.display, opts.label.as_deref());
    let result = if into_hub {
        hub::drive_hub(&mut session, src, daemon).await
    } else if let (true, Some(layers)) = (use_delta, layers) {
        tracing::info!(
            "dos: sending {} (only the layers the far side lacks)",
            src.image_str
        );
        // A far side that took the plan from our hello is already answering.
        if !peer.has(FEATURE_EARLY_PLAN) {
            let p = delta_plan(src, &layers);
            mux.control(
                Message::Delta {
                    image_id: p.image_id,
                    diff_ids: p.diff_ids,
                    manifest: p.manifest,
                    config: p.config,
                }
                .to_bytes(),
            )
            .await;
        }
        drive_delta(&mut session, src, layers, capture, &board).await
    } else {
        drive_registry(&mut session, src, daemon, opts, plan).await
    };
    // A write cut off because the transport ended is the lost link,
    // whichever end noticed first: the session recorded why it ended.
    let result = result.map_err(|e| match session.ended() {
        Some(why) if cut_off(&e) && !is_peer_word(&e) => {
            anyhow::Error::new(PeerError::lost(why)).context(format!("{e:#}"))
        }
        _ => e,
    });
    if result.is_ok() {
        board.done();
    }
    display.finish();
    if let (Wire::Stdio, Err(e)) = (wire, &result) {
        // The fetcher prints why; its own word needs no echo.
        if !e.chain().any(|c| c.is::<PeerError>()) {
            let msg = Message::Outcome {
                ok: false,
                message: format!("{e:#}"),
                refused: false,
                image_id: None,
                far: None,
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), mux.control(msg.to_bytes())).await;
        }
    }
    // Flush and close our half; bounded, as a dead link never drains. After
    // a failure there is nothing left worth waiting for.
    let grace = Duration::from_secs(if result.is_ok() { 10 } else { 1 });
    let _ = tokio::time::timeout(grace, mux.shutdown()).await;
    let ((far_id, far), stats) = result?;
    let local_id = same_image(src, &far_id, far.as_ref())?;
    let (wire_out, wire_in) = mux.wire_bytes();
    Ok(PushReport {
        image_id: far_id,
        local_id,
        local_engine: src.engine.to_string(),
        far_engine: far.map(|f| f.engine),
        path: if into_hub {
            "hub"
        } else if use_delta {
            "delta"
        } else {
            "registry"
        },
        wire_out,
        wire_in,
        elapsed: started.elapsed(),
        layers_sent: stats.as_ref().map_or(0, |s| s.layers_sent),
        layers_present: stats.as_ref().map_or(0, |s| s.layers_skipped),
        source: stats.as_ref().map(|s| s.source),
        image_size: src.local.size,
    })
}
