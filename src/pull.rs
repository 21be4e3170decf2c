//! `dos pull IMAGE`: the far end. Speaks dos on stdin/stdout, follows the
//! pusher's plan (receive a delta, or let the local daemon pull through a
//! loopback relay), and reports the outcome.
//!
//! stdout IS the protocol here: nothing else may be written to it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::allow::{image_from_original_command, AllowList};
use crate::auth::Credentials;
use crate::delta::proof;
use crate::delta::receive::{self, ReceivePlan, SourceManifest};
use crate::delta::spool::{Entry, Spool};
use crate::engine::{Engine, Ids, Loaded};
use crate::error::{PeerError, SetupError};
use crate::mux::{self, Event, Liveness, Mux, Session, Side};
use crate::protocol::handshake::{
    self, DeltaPlan, Hello, Role, FEATURE_DELTA, FEATURE_EARLY_PLAN, FEATURE_FRAMES,
    FEATURE_HEARTBEAT, FEATURE_PROGRESS,
};
use crate::protocol::message::{FarImage, Message, Offer, Resume};
use crate::reference::ImageRef;
use crate::registry::client::Client;
use crate::registry::path::{valid_name, Digest};
use crate::relay::Relay;

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
}

/// Receive as `opts` says. SIGINT, SIGTERM and SIGHUP (ssh going away)
/// end it wherever it is, and the relay's names are removed.
pub async fn pull(opts: PullOptions) -> Result<()> {
    crate::signal::run_interruptible(run(opts)).await
}

async fn run(opts: PullOptions) -> Result<()> {
    let mut stdout = tokio::io::stdout();
    let mut stdin = crate::stdio::stdin();
    // A forced command that refuses what the key asked to run still
    // speaks dos: the pusher learns it was refused (not that the far side
    // isn't dos), and a person at a plain ssh prompt reads why on stderr.
    let mut refusal = None;
    let fixed = match (&opts.image, &opts.original_command) {
        (Some(i), _) => Some(i.clone()),
        (None, Some(cmd)) => match image_from_original_command(cmd) {
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
    // A fixed image is checked before anything is read.
    let fixed = fixed.map(checked).transpose()?;
    // The pusher's hello comes first (it doesn't wait for ours): without a
    // fixed image it names the image, and it may carry the plan. Meanwhile
    // this side connects to its engine: every engine takes a delta, but if
    // the daemon is unreachable we still speak, so the pusher learns why.
    let (read, engine) = tokio::join!(
        handshake::read_within(&mut stdin, opts.hello),
        Engine::connect()
    );
    let delta = engine.is_ok();
    if let Ok(e) = &engine {
        tracing::debug!("far engine: {e}");
    }
    let (peer, leftover) = read.context("reading the pusher's handshake")?;
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

    let result = if let Some(why) = refusal {
        Err(PeerError::Refused(why).into())
    } else if opts.allow.allows(&image) {
        serve(&mut session, &wanted, &image, peer, early, engine).await
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
    let msg = match &result {
        Ok((id, far)) => Message::Outcome {
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
    result.map(|_| ())
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
    wanted: &ImageRef,
    wanted_str: &str,
    peer: Hello,
    early: Option<DeltaPlan>,
    engine: Result<Engine>,
) -> Result<(String, FarImage)> {
    if peer.role != Role::Push {
        bail!(PeerError::Refused(
            "the other side is not a dos push".into()
        ));
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
    let (loaded, config) = match plan {
        Message::Registry { offer } => {
            let loaded = via_registry(mux, &engine, &offer, wanted, wanted_str).await?;
            (loaded, offer.image_id)
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
            };
            let loaded = via_delta(session, &engine, offered).await?;
            engine
                .daemon
                .tag(&loaded.id, &wanted.repository(), wanted.tag_or_latest())
                .await?;
            (loaded, image_id)
        }
        other => bail!(PeerError::Refused(format!("unexpected plan {other:?}"))),
    };
    let far = FarImage {
        engine: engine.to_string(),
        ids: engine.ids(),
        config,
        diff_ids: loaded.diff_ids,
    };
    Ok((loaded.id, far))
}

/// The image a delta plan offers.
struct Offered<'a> {
    /// Its config digest.
    config: &'a str,
    diff_ids: Vec<String>,
    /// The source's manifest, if the plan carries it.
    manifest: Option<String>,
    /// Its config, if the plan carries it (the pusher's proof).
    config_json: Option<String>,
    /// The pusher shows progress: say when each layer checks out.
    progress: bool,
}

async fn via_delta(session: &mut Session, engine: &Engine, offered: Offered<'_>) -> Result<Loaded> {
    let Offered {
        config,
        diff_ids,
        manifest,
        config_json,
        progress,
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
            return Ok(loaded);
        }
        let stream = next_stream(session, "its proof").await?;
        let (near, far) = tokio::io::duplex(64 * 1024);
        mux.attach(stream, near);
        proof::check(far, config, &diff_ids)
            .await
            .map_err(|e| PeerError::Refused(format!("{e:#}")))?;
        return Ok(loaded);
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
    let (verified, told) = if progress {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let m = mux.clone();
        let told = tokio::spawn(async move {
            while let Some(diff_id) = rx.recv().await {
                m.control(Message::Verified { diff_id }.to_bytes()).await;
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
    let manifest = received?;
    // Trust the engine's word, not ours: the loaded image must be the one
    // offered, and whole (an incomplete one is removed).
    let loaded = engine
        .verify(manifest.as_deref(), config, &plan.diff_ids)
        .await
        .map_err(|e| anyhow!(PeerError::FarFailure(format!("{e:#}"))))?;
    plan.clean_spool();
    Ok(loaded)
}

/// The stream the pusher opens next, carrying `what`.
async fn next_stream(session: &mut Session, what: &str) -> Result<mux::MuxStream> {
    match session.next().await {
        Some(Event::Open(s)) => Ok(s),
        Some(Event::Control(b)) => bail!(PeerError::Refused(format!(
            "unexpected message while waiting for {what}: {}",
            String::from_utf8_lossy(&b)
        ))),
        None => bail!(
            "the session ended before the pusher sent {what}: {}",
            session.end().await
        ),
    }
}

async fn via_registry(
    mux: &Mux,
    engine: &Engine,
    offer: &Offer,
    wanted: &ImageRef,
    wanted_str: &str,
) -> Result<Loaded> {
    let ok = valid_name(&offer.repository)
        && Digest::parse(&offer.manifest).is_some()
        && Digest::parse(&offer.image_id).is_some();
    if !ok {
        bail!(PeerError::Refused("the pusher's offer is malformed".into()));
    }
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the relay to 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let source = format!("{addr}/{}", offer.repository);
    let creds = Credentials {
        username: offer.username.clone(),
        password: offer.password.clone(),
    };
    // The daemon's pull goes through the relay, its blobs into the spool.
    let relay = Relay::new(mux.clone(), creds.clone());
    let acceptor = relay.serve(listener);
    tracing::info!("dos: pulling {wanted_str} through the relay");
    let daemon = &engine.daemon;
    let pulled_ref = format!("{source}@{}", offer.manifest);
    let prefix = format!("{addr}/");
    crate::leftovers::watch(daemon, &prefix);
    // A daemon whose relay is gone retries its downloads for a minute or
    // more; the pull stops with the session instead.
    let pulled = tokio::select! {
        r = engine.pull_relayed(&source, &offer.manifest, creds.docker(&addr.to_string())) => r,
        why = mux.closed() => Err(anyhow!(PeerError::lost(format!(
            "the session ended during the pull: {why}"
        )))),
    };
    let finished = async {
        pulled?;
        let registry = Client::new(&addr.to_string(), &offer.repository, &creds);
        engine
            .complete_pull(&registry, &offer.manifest)
            .await
            .map_err(|e| anyhow!(PeerError::FarFailure(format!("{e:#}"))))?;
        let got = daemon.inspect(&pulled_ref).await?;
        let id = got.id.context("the daemon reported no image ID")?;
        // The manifest pulled is the one offered (pinned by digest), and it
        // names the config; the engine names the image by one or the other.
        let expected = engine.id_for(&offer.manifest, &offer.image_id);
        if id != expected {
            bail!(PeerError::FarFailure(format!(
                "pulled image {id}, but the pusher offered {expected} (config {})",
                offer.image_id
            )));
        }
        // Tag before the relay's name goes: an image left with no name
        // would be deleted with it.
        daemon
            .tag(&id, &wanted.repository(), wanted.tag_or_latest())
            .await?;
        relay.loaded();
        let diff_ids = got.root_fs.and_then(|r| r.layers).unwrap_or_default();
        Ok(Loaded { id, diff_ids })
    }
    .await;
    acceptor.abort();
    // Remove the relay's names (a digest reference under 127.0.0.1:PORT)
    // whether or not the pull worked.
    match daemon.untag_all_under(&prefix).await {
        Ok(()) => crate::leftovers::unwatch(&prefix),
        Err(e) => tracing::warn!("{e:#}"),
    }
    finished
}
