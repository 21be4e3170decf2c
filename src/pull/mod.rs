//! `dos pull IMAGE`: the receiving end. Speaks dos on stdin/stdout (or,
//! for `dos fetch`, on the pipes of the command that started `dos send`
//! there), follows the sender's plan (receive a delta, or let the engine
//! pull through a loopback relay), and reports the outcome.
//!
//! - [`delta`]: the delta plan: what the engine has, the rest received;
//! - [`registry`]: the registry plan: the engine's pull through the relay.
//!
//! As `dos pull`, stdout IS the protocol: nothing else may be written to it.

mod delta;
mod registry;
mod report;

pub use report::Received;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::allow::{image_from_original_command, verb_of, AllowList, Verb};
use crate::engine::Engine;
use crate::error::{PeerError, SetupError};
use crate::mux::{self, Event, Liveness, Session, Side};
use crate::progress::{Board, Display, Mode};
use crate::protocol::handshake::{
    self, DeltaPlan, Hello, Role, FEATURE_DELTA, FEATURE_EARLY_PLAN, FEATURE_FRAMES,
    FEATURE_HEARTBEAT, FEATURE_PROGRESS, FEATURE_TELLS,
};
use crate::protocol::message::{FarImage, Message};
use crate::reference::ImageRef;

use delta::{via_delta, Offered};
use registry::via_registry;

pub struct PullOptions {
    /// The image to receive. None: the one SSH_ORIGINAL_COMMAND names (an
    /// ssh forced command), else the one the pusher offers (then `allow`
    /// must not be empty).
    pub image: Option<String>,
    /// Only these images may be received.
    pub allow: AllowList,
    /// SSH_ORIGINAL_COMMAND, when sshd ran us as a forced command.
    pub original_command: Option<String>,
    /// Give up when nothing arrives from the pusher for this long.
    pub idle: Duration,
    /// Give up when the pusher has not said hello after this long.
    pub hello: Duration,
    /// The engine; None: DOCKER_HOST as the docker CLI reads it.
    pub docker_host: Option<String>,
    /// How progress is shown on stderr (a fetch; a pull shows none: the
    /// pusher does).
    pub display: Mode,
}

impl PullOptions {
    /// Receive `image`, as asked for here (no allow-list, no forced command).
    pub fn new(image: impl Into<String>) -> PullOptions {
        PullOptions {
            image: Some(image.into()),
            allow: AllowList::default(),
            original_command: None,
            idle: crate::push::DEFAULT_IDLE,
            hello: crate::push::DEFAULT_HELLO,
            docker_host: None,
            display: Mode::Quiet,
        }
    }
}

/// Receive as `opts` says on stdin/stdout. SIGINT, SIGTERM and SIGHUP (ssh
/// going away) end it wherever it is, and the relay's names are removed.
pub async fn pull(opts: PullOptions) -> Result<()> {
    let (input, output) = (crate::stdio::stdin(), tokio::io::stdout());
    crate::signal::run_interruptible(receive(input, output, opts))
        .await
        .map(|_| ())
}

/// Receive over `input`/`output`, whoever started whom. The caller makes
/// it interruptible.
pub async fn receive<R, W>(mut stdin: R, mut stdout: W, opts: PullOptions) -> Result<Received>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let started = Instant::now();
    // A forced command that refuses what the key asked to run still
    // speaks dos: the pusher learns it was refused (not that the far side
    // isn't dos), and a person at a plain ssh prompt reads why on stderr.
    let mut refusal = None;
    let fixed = match (&opts.image, &opts.original_command) {
        (Some(i), _) => Some(i.clone()),
        (None, Some(cmd)) => match image_from_original_command(cmd, Verb::Pull) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::error!("dos: {e:#}");
                refusal = Some(format!("{e:#}"));
                None
            }
        },
        (None, None) if !opts.allow.is_empty() => None,
        (None, None) => bail!(SetupError(
            "dos pull: no image given (dos pull IMAGE, or --allow PATTERN to take the pusher's)"
                .into()
        )),
    };
    if let (Some(why), Some(Verb::Send)) =
        (&refusal, opts.original_command.as_deref().and_then(verb_of))
    {
        // A fetch through a key locked to `dos pull`: the fetcher waits
        // for a sender's hello, so ours goes first and says what this is.
        let hello = Hello {
            role: Role::Pull,
            image: String::new(),
            release: env!("CARGO_PKG_VERSION").into(),
            features: Vec::new(),
            delta: None,
        };
        stdout.write_all(&handshake::encode(&hello)).await?;
        stdout.flush().await?;
        bail!(PeerError::Refused(why.clone()));
    }
    // A fixed image is checked before anything is read.
    let fixed = fixed.map(checked).transpose()?;
    // The pusher's hello comes first (it doesn't wait for ours): without a
    // fixed image it names the image, and it may carry the plan. Meanwhile
    // this side connects to its engine: every engine takes a delta, but if
    // the daemon is unreachable we still speak, so the pusher learns why.
    let (read, engine) = tokio::join!(handshake::read_within(&mut stdin, opts.hello), async {
        match &opts.docker_host {
            Some(h) => Engine::connect_to(h).await,
            None => Engine::connect().await,
        }
    });
    let delta = engine.is_ok();
    if let Ok(e) = &engine {
        tracing::debug!("far engine: {e}");
    }
    let (peer, leftover) = read.context("reading the pusher's handshake")?;
    if peer.role == Role::Pull {
        // Two receivers (a fetch through a key locked to `dos pull`): the
        // other side has said what it is and stopped; nothing to answer.
        bail!(PeerError::Refused(NOT_A_SENDER.into()));
    }
    let (image, wanted) = match fixed {
        Some(f) => f,
        // Refused: the pusher's offer is named back, so that it reads on
        // to the refusal.
        None if refusal.is_some() => match ImageRef::parse(&peer.image) {
            Ok(r) => (peer.image.clone(), r),
            Err(_) => bail!(PeerError::Refused(refusal.unwrap_or_default())),
        },
        None => checked(peer.image.clone())?,
    };
    // Following the plan in the pusher's hello saves waiting for it.
    let early = peer.delta.clone().filter(|_| delta);
    let mut features = vec![FEATURE_HEARTBEAT.to_string()];
    if delta {
        features.push(FEATURE_DELTA.into());
    }
    if early.is_some() {
        features.push(FEATURE_EARLY_PLAN.into());
    }
    if delta {
        // Says when each layer checks out, to a pusher that shows progress.
        features.push(FEATURE_PROGRESS.into());
        features.push(FEATURE_FRAMES.into());
    }
    let hello = Hello {
        role: Role::Pull,
        image: image.clone(),
        release: env!("CARGO_PKG_VERSION").into(),
        features,
        delta: None,
    };
    stdout.write_all(&handshake::encode(&hello)).await?;
    stdout.flush().await?;
    let liveness = Liveness::with_peer(peer.has(FEATURE_HEARTBEAT), opts.idle);
    let mut session = mux::start(stdin, leftover, stdout, Side::Dialer, liveness);
    let mux = session.mux.clone();
    let tells = peer.has(FEATURE_TELLS);
    let board = (opts.display != Mode::Quiet).then(|| {
        let m = mux.clone();
        Board::new(Arc::new(move || {
            let (o, i) = m.wire_bytes();
            o + i
        }))
    });
    let display = board
        .as_ref()
        .map(|b| Display::start(b.clone(), opts.display, None));

    let result = if let Some(why) = refusal {
        Err(PeerError::Refused(why).into())
    } else if opts.allow.allows(&image) {
        let ctx = Asked {
            wanted: &wanted,
            wanted_str: &image,
            board: board.as_ref(),
            tells,
        };
        serve(&mut session, ctx, peer, early, engine).await
    } else {
        Err(PeerError::Refused(format!(
            "{image} is not allowed here (dos pull --allow {})",
            opts.allow.describe()
        ))
        .into())
    };
    // An error met because the session ended (a stream cut short) says
    // why it ended.
    let result = result.map_err(|e| match session.ended() {
        Some(why)
            if e.downcast_ref::<PeerError>().is_none() && !format!("{e:#}").contains(&why) =>
        {
            e.context(format!("the session ended: {why}"))
        }
        _ => e,
    });
    if let (Some(b), Ok(_)) = (&board, &result) {
        b.done();
    }
    if let Some(d) = display {
        d.finish();
    }
    let msg = match &result {
        Ok(Served { id, far, .. }) => Message::Outcome {
            ok: true,
            refused: false,
            message: format!("{image} is on the far daemon"),
            image_id: Some(id.clone()),
            far: Some(far.clone()),
        },
        Err(e) => Message::Outcome {
            ok: false,
            // The pusher says "the far side failed: …" (or "refused: …")
            // itself.
            message: match e.downcast_ref::<PeerError>() {
                Some(PeerError::FarFailure(m) | PeerError::Refused(m)) => m.clone(),
                _ => format!("{e:#}"),
            },
            refused: matches!(e.downcast_ref::<PeerError>(), Some(PeerError::Refused(_))),
            image_id: None,
            far: None,
        },
    };
    // Bounded: if the pusher is gone, the write fails or stalls; don't hang.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        mux.control(msg.to_bytes()).await;
        mux.shutdown().await
    })
    .await;
    let served = result?;
    let (wire_out, wire_in) = mux.wire_bytes();
    Ok(Received {
        image_id: served.id,
        here: served.far,
        path: served.path,
        layers_present: served.present,
        layers_received: served.received,
        wire_in,
        wire_out,
        elapsed: started.elapsed(),
    })
}

const NOT_A_SENDER: &str = "the other side is a dos pull, not a dos push or send: images go to it, not from it (is this key locked to dos pull?)";

/// What a receive needs to know besides the session.
struct Asked<'a> {
    wanted: &'a ImageRef,
    wanted_str: &'a str,
    board: Option<&'a Arc<Board>>,
    /// The sender tells its failures ([`FEATURE_TELLS`]).
    tells: bool,
}

/// The image in place.
struct Served {
    id: String,
    far: FarImage,
    path: &'static str,
    present: usize,
    received: usize,
}

/// A sender's word in place of a plan or a stream: why it can't send.
pub(crate) fn senders_word(msg: &Message) -> Option<PeerError> {
    match msg {
        Message::Outcome {
            ok: false,
            message,
            refused,
            ..
        } => Some(if *refused {
            PeerError::Refused(message.clone())
        } else {
            PeerError::FarFailure(message.clone())
        }),
        _ => None,
    }
}

/// An image reference this side can tag.
fn checked(image: String) -> Result<(String, ImageRef)> {
    let r = ImageRef::parse(&image)?;
    r.require_taggable(&image)?;
    Ok((image, r))
}

/// Check the pusher, follow its plan, tag the result; returns the image ID
/// and the far engine's view of the image.
async fn serve(
    session: &mut Session,
    ctx: Asked<'_>,
    peer: Hello,
    early: Option<DeltaPlan>,
    engine: Result<Engine>,
) -> Result<Served> {
    let Asked {
        wanted, wanted_str, ..
    } = ctx;
    if peer.role != Role::Push {
        bail!(PeerError::Refused(NOT_A_SENDER.into()));
    }
    let offered = ImageRef::parse(&peer.image).map_err(|e| PeerError::Refused(e.to_string()))?;
    if !offered.same_as(wanted) {
        bail!(PeerError::Refused(format!(
            "the pusher offers {} but this side asked for {wanted_str}",
            peer.image
        )));
    }
    let engine = engine?;
    let mux = &session.mux.clone();
    let plan = match early {
        Some(p) => Message::Delta {
            image_id: p.image_id,
            diff_ids: p.diff_ids,
            manifest: p.manifest,
            config: p.config,
        },
        None => loop {
            match session.next().await {
                Some(Event::Control(b)) => {
                    break Message::from_bytes(&b).context("reading the pusher's plan")?
                }
                Some(Event::Open(s)) => mux.reject(s, "no plan yet").await,
                None => bail!("the pusher closed the session before sending a plan"),
            }
        },
    };
    if let Some(e) = senders_word(&plan) {
        bail!(e);
    }
    let (loaded, config, counts) = match plan {
        Message::Registry { offer } => {
            let loaded = via_registry(mux, &engine, &offer, wanted, wanted_str).await?;
            (loaded, offer.image_id, None)
        }
        Message::Delta {
            image_id,
            diff_ids,
            manifest,
            config,
        } => {
            let offered = Offered {
                config: &image_id,
                diff_ids,
                manifest,
                config_json: config,
                progress: peer.has(FEATURE_PROGRESS),
                board: ctx.board.cloned(),
                tells: ctx.tells,
            };
            let (loaded, present) = via_delta(session, &engine, offered).await?;
            engine
                .daemon
                .tag(&loaded.id, &wanted.repository(), wanted.tag_or_latest())
                .await?;
            let all = loaded.diff_ids.len();
            (
                loaded,
                image_id,
                Some((present, all.saturating_sub(present))),
            )
        }
        other => bail!(PeerError::Refused(format!("unexpected plan {other:?}"))),
    };
    let far = FarImage {
        engine: engine.to_string(),
        ids: engine.ids(),
        config,
        diff_ids: loaded.diff_ids,
    };
    Ok(Served {
        id: loaded.id,
        far,
        path: if counts.is_some() {
            "delta"
        } else {
            "registry"
        },
        present: counts.map_or(0, |c| c.0),
        received: counts.map_or(0, |c| c.1),
    })
}
