//! `dos push IMAGE CMD...`: start CMD, agree with the far `dos pull` on a
//! plan, and carry it out.
//!
//! - delta (both ends dos, classic image stores): stream only the layers the
//!   far daemon lacks out of the local export;
//! - registry: put the image in a registry on this machine and serve the far
//!   daemon's `docker pull` through the gated relay.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::auth::Credentials;
use crate::capture;
use crate::delta::content::ContentStore;
use crate::delta::proof;
use crate::delta::send::{self, SendPlan, SendStats};
use crate::delta::store::LocalStore;
use crate::docker::Daemon;
use crate::engine::{self, oci, Engine, Ids};
use crate::error::{PeerError, SetupError};
use crate::gate::Gate;
use crate::mux::{self, Event, Liveness, Session, Side};
use crate::progress::Progress;
use crate::protocol::handshake::{
    self, DeltaPlan, HandshakeError, Hello, Role, FEATURE_DELTA, FEATURE_EARLY_PLAN,
    FEATURE_HEARTBEAT,
};
use crate::protocol::message::{FarImage, Message, Offer};
use crate::reference::ImageRef;
use crate::registry::Registry;
pub use crate::setup::Via;
use crate::setup::{Environment, Exposure, Plan};
use crate::transport::{describe, Transport};
use crate::tunnel::forward::Forward;
use crate::tunnel::ngrok::Ngrok;
use crate::tunnel::{self, Tunnel};

pub struct PushOptions {
    pub image: String,
    pub command: Vec<String>,
    /// Use the registry already listening on 127.0.0.1:PORT.
    pub registry_port: Option<u16>,
    pub via: Via,
    /// What the environment says (CI variables, DOCKER_HOST).
    pub env: Environment,
    /// The local daemon; None: DOCKER_HOST as the docker CLI reads it.
    pub docker_host: Option<String>,
    /// Expose the registry through this instead of what the environment
    /// asks for (the tests use a [`crate::tunnel::guarded::Guarded`] endpoint).
    pub tunnel: Option<Arc<dyn Tunnel>>,
    /// Give up when nothing arrives from the far side for this long (the far
    /// dos sends heartbeats, so silence means the link is gone).
    pub idle: Duration,
    /// Give up when the far dos has not said hello after this long.
    pub hello: Duration,
}

/// How long the far side's hello is waited for: ssh connecting and a
/// password typed at its prompt fit; a host that hangs is named in a minute.
pub const DEFAULT_HELLO: Duration = Duration::from_secs(60);

/// The default idle limit: long enough for a congested mobile link, short
/// enough that a dead one is noticed while the user still watches.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30);

impl PushOptions {
    pub fn new(image: impl Into<String>, command: Vec<String>) -> PushOptions {
        PushOptions {
            image: image.into(),
            command,
            registry_port: None,
            via: Via::Auto,
            env: Environment::from_process(),
            docker_host: None,
            tunnel: None,
            idle: DEFAULT_IDLE,
            hello: DEFAULT_HELLO,
        }
    }

    /// What this push will do, and why.
    pub fn plan(&self) -> Plan {
        let mut plan = Plan::new(&self.env, self.via, self.registry_port);
        if let Some(t) = &self.tunnel {
            plan.exposure = Exposure::Tunnel(t.name());
        }
        plan
    }
}

/// What a successful push did.
#[derive(Debug)]
pub struct PushReport {
    /// The image's ID on the far engine.
    pub image_id: String,
    /// Its ID here, where the far engine names images another way (the
    /// config digest and the layers are the same on both).
    pub local_id: Option<String>,
    /// The engines at both ends (the far one as it says, when it does).
    pub local_engine: String,
    pub far_engine: Option<String>,
    /// "delta" or "registry".
    pub path: &'static str,
    /// Bytes written to and read from the transport.
    pub wire_out: u64,
    pub wire_in: u64,
    pub elapsed: Duration,
    /// Delta only: layers sent / already on the far side.
    pub layers_sent: usize,
    pub layers_present: usize,
    /// Delta only: how the layers were read from the local daemon.
    pub source: Option<&'static str>,
}

struct Source {
    image: ImageRef,
    image_str: String,
    /// The image as the local engine has it (its ID, config digest, layers).
    local: engine::Image,
    engine: Engine,
}

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
    crate::signal::run_interruptible(run(opts)).await
}

async fn run(opts: PushOptions) -> Result<PushReport> {
    let image = ImageRef::parse(&opts.image)?;
    if opts.command.is_empty() {
        bail!("no transport command given (e.g. dos push app:1 ssh host dos pull app:1)");
    }
    let plan = opts.plan();
    if let Some(why) = plan.blocked() {
        bail!(SetupError(format!("not pushing: {why}")));
    }
    // The image must exist before anything is started or tagged.
    let engine = match &opts.docker_host {
        Some(h) => Engine::connect_to(h).await?,
        None => Engine::connect().await?,
    };
    let daemon = engine.daemon.clone();
    // The delta path is possible unless the user chose otherwise (a service
    // registry keeps the registry path, as in the original tool) or the
    // local engine's layers can't be read one by one.
    let delta_wanted = plan.try_delta;
    let delta_possible = delta_wanted && engine.reads_layers();
    if opts.via == Via::Delta && !delta_possible {
        bail!(SetupError(format!(
            "--via delta: dos does not read layers out of {engine}; use --via registry"
        )));
    }
    daemon.inspect(&opts.image).await?;
    tracing::debug!("local engine: {engine}");
    let mut transport = Transport::spawn(&opts.command)?;
    // While the transport connects: what the transfer needs to know of the
    // image (on a containerd store, its manifest, through a push).
    let local = match engine.image(&opts.image).await {
        Ok(l) => l,
        Err(e) => {
            transport.finish(Duration::ZERO).await;
            return Err(e);
        }
    };
    let src = Source {
        image,
        image_str: opts.image.clone(),
        local,
        engine: engine.clone(),
    };

    // Export alone where the classic store's faster readers don't apply.
    let classic_readers = delta_possible && engine.classic_readers();
    // While ssh connects: can the layers be read straight out of the
    // daemon's store (as root, on its machine)? Then neither `docker save`
    // nor the capture registry is needed.
    let store = if classic_readers {
        LocalStore::open(&daemon, &src.local.id, &src.local.diff_ids).await
    } else {
        None
    };
    // If not: can the daemon hand over just the new layers (capture), and
    // is this image mostly known to it, so that its push should start now?
    let mut capture = None;
    let mut pushing_early = false;
    if classic_readers && store.is_none() {
        let image = capture::Image {
            id: src.local.id.clone(),
            diff_ids: src.local.diff_ids.clone(),
            size: src.local.size,
        };
        capture = capture::Session::open(&daemon, image).await;
        if let Some(c) = capture.as_mut() {
            pushing_early = c.start_early();
        }
    }
    // An image the daemon's push does not mostly know, and its store can't
    // give, will be read with `docker save` unless the far side has it all:
    // start the export now, so that its preparation overlaps ssh
    // connecting. Otherwise the request waits for the far side's answer (and
    // is only made if `docker save` is the way).
    // An image the local engine names by its manifest (the containerd
    // store) is read out of its content store where this process can.
    let content = match &src.local.manifest {
        Some(_) if delta_possible => ContentStore::open(&daemon, &src.local.config).await,
        _ => None,
    };
    let early = !pushing_early && store.is_none() && content.is_none();
    let layers = delta_possible.then(|| Layers {
        export: send::start_export(&daemon, &src.local.id, early),
        store,
        content,
    });
    let result = session(
        &mut transport,
        &src,
        &daemon,
        layers,
        &mut capture,
        &opts,
        &plan,
    )
    .await;
    let grace = Duration::from_secs(if result.is_ok() { 2 } else { 0 });
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

async fn session(
    t: &mut Transport,
    src: &Source,
    daemon: &Daemon,
    layers: Option<Layers<impl AsyncRead + Send + Unpin + 'static>>,
    capture: &mut Option<capture::Session>,
    opts: &PushOptions,
    plan: &Plan,
) -> Result<PushReport> {
    let hello = Hello {
        role: Role::Push,
        image: src.image_str.clone(),
        release: env!("CARGO_PKG_VERSION").into(),
        features: if layers.is_some() {
            vec![FEATURE_DELTA.into(), FEATURE_HEARTBEAT.into()]
        } else {
            vec![FEATURE_HEARTBEAT.into()]
        },
        delta: layers.as_ref().map(|l| delta_plan(src, l)),
    };
    let mut stdin = t.stdin.take().context("transport stdin")?;
    let mut stdout = t.stdout.take().context("transport stdout")?;
    // Our hello goes first; a far side that isn't dos just won't read it.
    let _ = async {
        stdin.write_all(&handshake::encode(&hello)).await?;
        stdin.flush().await
    }
    .await;
    let (peer, leftover) = handshake::read_within(&mut stdout, opts.hello).await?;
    if peer.role != Role::Pull {
        bail!(PeerError::Refused("the far side is not a dos pull".into()));
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
    let use_delta = layers.is_some() && peer.has(FEATURE_DELTA);
    if opts.via == Via::Delta && !use_delta {
        bail!(PeerError::Refused(
            "--via delta: the far dos can't receive a delta (it is an older dos, or its daemon is unreachable)".into()
        ));
    }
    if !use_delta {
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
    let progress = Progress::start(
        "transfer",
        Arc::new(move || {
            let (o, i) = m.wire_bytes();
            o + i
        }),
    );
    let result = if let (true, Some(layers)) = (use_delta, layers) {
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
        drive_delta(&mut session, src, layers, capture).await
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
    progress.finish(if result.is_ok() { "done" } else { "failed" });
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
        path: if use_delta { "delta" } else { "registry" },
        wire_out,
        wire_in,
        elapsed: started.elapsed(),
        layers_sent: stats.as_ref().map_or(0, |s| s.layers_sent),
        layers_present: stats.as_ref().map_or(0, |s| s.layers_skipped),
        source: stats.as_ref().map(|s| s.source),
    })
}

/// Where the delta path reads the missing layers: the daemon's store if it
/// can, else (and should a layer there not be readable) its export.
struct Layers<E> {
    export: E,
    store: Option<LocalStore>,
    /// The containerd content store, where the image's blobs are read as
    /// they are stored.
    content: Option<ContentStore>,
}

/// Is what the far side reports the image sent? The config digest and the
/// layers must be the source's, and a far engine that names images by their
/// config must name it by this one. Returns the local ID where the two IDs
/// differ by design (a containerd store names an image by its manifest, and
/// dos writes its own manifest over plain-tar layers).
fn same_image(src: &Source, far_id: &str, far: Option<&FarImage>) -> Result<Option<String>> {
    let local = &src.local;
    // An older far dos says nothing more: its engine names images by config.
    let far_ids = far.map_or(Ids::Config, |f| f.ids);
    if let Some(f) = far {
        if f.config != local.config || f.diff_ids != local.diff_ids {
            bail!(PeerError::FarFailure(format!(
                "the far daemon holds config {} with layers {:?}; sent config {} with layers {:?}",
                f.config, f.diff_ids, local.config, local.diff_ids
            )));
        }
    }
    if far_ids == Ids::Config && far_id != local.config {
        bail!(PeerError::FarFailure(format!(
            "the far daemon reports image {far_id}, expected {}",
            local.config
        )));
    }
    Ok((far_id != local.id).then(|| local.id.clone()))
}

/// The source's manifest as the plan carries it: only where it fits the
/// hello with room to spare (a manifest is about 200 bytes a layer, and
/// Docker stacks at most 128), else the layers cross as plain tars.
fn plan_manifest(src: &Source) -> Option<String> {
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
fn delta_plan<E>(src: &Source, layers: &Layers<E>) -> DeltaPlan {
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

/// A write into a stream failed because its other end is gone (the far
/// side reset it, or the session ended), not because of this side.
fn cut_off(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The far side said why (a refusal, a failure, its handshake), or the
/// user interrupted: not to be recast as a lost link.
fn is_peer_word(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<PeerError>() || c.is::<HandshakeError>() || c.is::<crate::error::Interrupted>()
    })
}

/// Delta: wait for the far side's inventory, stream what it lacks, and wait
/// for its outcome.
async fn drive_delta(
    session: &mut Session,
    src: &Source,
    layers: Layers<impl AsyncRead + Send + Unpin + 'static>,
    capture: &mut Option<capture::Session>,
) -> Result<(Reported, Option<SendStats>)> {
    let Layers {
        export,
        mut store,
        mut content,
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
                        if image && !prove {
                            drop(export);
                            continue;
                        }
                        let stream = mux.open().await?;
                        let (near, far) = tokio::io::duplex(256 * 1024);
                        mux.attach(stream, near);
                        let resume = resume.into_iter().map(|r| (r.diff_id, r.offset)).collect();
                        let read = Arc::new(AtomicU64::new(0));
                        let plan = SendPlan { image_id: src.local.config.clone(), diff_ids: src.local.diff_ids.clone(), have: layers, resume, read: read.clone(), sizes, packed: src.local.packed.clone(), blobs: blobs && plan_manifest(src).is_some() };
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

/// Registry: push into the registry, offer it, serve the relay until the
/// far side reports.
async fn drive_registry(
    session: &mut Session,
    src: &Source,
    daemon: &Daemon,
    opts: &PushOptions,
    plan: &Plan,
) -> Result<(Reported, Option<SendStats>)> {
    let registry;
    let (addr, push_creds) = match plan.registry_port {
        Some(port) => (format!("127.0.0.1:{port}"), None),
        None => {
            registry = Registry::start().await?;
            (
                registry.addr().to_string(),
                Some(registry.credentials().clone()),
            )
        }
    };
    let tunnel: Option<Arc<dyn Tunnel>> = match (&opts.tunnel, &plan.exposure) {
        (Some(t), _) => Some(t.clone()),
        (None, Exposure::Ngrok(token)) => Some(Arc::new(Ngrok::new(token.clone()))),
        _ => None,
    };
    let manifest = match tunnel {
        None => {
            tracing::info!("dos: pushing {} into the registry at {addr}", src.image_str);
            push_to_registry(daemon, src, &addr, push_creds.as_ref()).await?
        }
        Some(tunnel) => {
            // Credentials for this push only; the endpoint admits nothing else.
            let creds = Credentials::generate("dos-push");
            let endpoint = tunnel
                .open(&creds)
                .await
                .with_context(|| format!("exposing the registry through {}", tunnel.name()))?;
            let forward = Forward::new(
                format!("http://{addr}"),
                push_creds.clone(),
                creds.clone(),
                endpoint.edge_checks_auth(),
                src.image.path.clone(),
            );
            let serving = tunnel::serve(endpoint, forward);
            let host = serving.host().to_string();
            tracing::info!(
                "dos: pushing {} through {} ({host})",
                src.image_str,
                tunnel.name()
            );
            let pushed = push_to_registry(daemon, src, &host, Some(&creds)).await;
            // Closed as soon as the push is done, whatever its outcome.
            serving.close().await;
            pushed?
        }
    };
    let pull_creds = Credentials::generate("dos-pull");
    let gate = Gate::new(
        format!("http://{addr}"),
        push_creds,
        pull_creds.clone(),
        src.image.path.clone(),
    );
    let offer = Offer {
        repository: src.image.path.clone(),
        manifest,
        image_id: src.local.config.clone(),
        username: pull_creds.username.clone(),
        password: pull_creds.password.clone(),
    };
    let mux = session.mux.clone();
    mux.control(Message::Registry { offer }.to_bytes()).await;
    loop {
        match session.next().await {
            Some(Event::Open(stream)) => {
                let (near, far) = tokio::io::duplex(64 * 1024);
                mux.attach(stream, near);
                let g = gate.clone();
                tokio::spawn(crate::http::serve_io(far, move |req| g.clone().handle(req)));
            }
            Some(Event::Control(bytes)) => match Message::from_bytes(&bytes) {
                Ok(Message::Outcome {
                    ok,
                    message,
                    refused,
                    image_id,
                    far,
                }) => {
                    return outcome(ok, message, refused, image_id, far).map(|r| (r, None));
                }
                Ok(other) => bail!(PeerError::FarFailure(format!(
                    "unexpected message {other:?}"
                ))),
                Err(e) => bail!(PeerError::lost(format!("unreadable control message: {e}"))),
            },
            None => bail!(PeerError::lost(session.end().await)),
        }
    }
}

/// Tag, push, and remove every name this step added, whatever happened.
/// Returns the manifest digest the push produced.
async fn push_to_registry(
    daemon: &Daemon,
    src: &Source,
    addr: &str,
    creds: Option<&Credentials>,
) -> Result<String> {
    let repo = format!("{addr}/{}", src.image.path);
    let tag = src.image.tag.clone().unwrap_or_else(|| "latest".into());
    let before = names_under(daemon, &src.local.id, addr).await;
    // What an interrupted run would leave: anything under the embedded
    // registry's fresh address (it has credentials); under a service
    // registry's, only the name this run adds (others there are the user's).
    let prefix = match creds {
        Some(_) => format!("{addr}/"),
        None => format!("{repo}:{tag}"),
    };
    if !before.contains(&format!("{repo}:{tag}")) {
        crate::leftovers::watch(daemon, &prefix);
    }
    let pushed = async {
        daemon.tag(&src.image_str, &repo, &tag).await?;
        let creds = creds.map(|c| c.docker(addr)).unwrap_or_default();
        daemon.push(&repo, &tag, creds).await?;
        manifest_digest(daemon, &src.local.id, &repo).await
    }
    .await;
    for n in names_under(daemon, &src.local.id, addr).await {
        if !before.contains(&n) {
            if let Err(e) = daemon.untag(&n).await {
                tracing::warn!("{e:#}");
            }
        }
    }
    crate::leftovers::unwatch(&prefix);
    pushed.with_context(|| format!("pushing {} into the registry at {addr}", src.image))
}

/// The far side's image ID and its view of the image.
type Reported = (String, Option<FarImage>);

fn outcome(
    ok: bool,
    message: String,
    refused: bool,
    image_id: Option<String>,
    far: Option<FarImage>,
) -> Result<Reported> {
    match (ok, image_id) {
        (true, Some(id)) => Ok((id, far)),
        (true, None) => Err(PeerError::FarFailure("no image ID reported".into()).into()),
        (false, _) if refused => Err(PeerError::Refused(message).into()),
        (false, _) => Err(PeerError::FarFailure(message).into()),
    }
}

/// What the transport printed on stderr, then on stdout before (or
/// instead of) a handshake.
fn printed_both(stderr: &str, stdout: &str) -> String {
    let mut all = stderr.trim_end().to_string();
    if !stdout.is_empty() {
        if !all.is_empty() {
            all.push('\n');
        }
        all.push_str(stdout);
    }
    all
}

/// Add what the far side printed (and how the command ended) to errors
/// where the user needs it to act.
fn explain(
    e: anyhow::Error,
    status: Option<std::process::ExitStatus>,
    stderr: &str,
    command: &[String],
) -> anyhow::Error {
    if let Some(h) = e.downcast_ref::<HandshakeError>() {
        return match h {
            HandshakeError::Silent { waited, printed } => {
                let all = printed_both(stderr, printed);
                PeerError::NotDos {
                    detail: format!(
                        "no dos handshake from `{}` after {}s (--hello-timeout, DOS_HELLO_TIMEOUT); it {}{}",
                        shell_words(command),
                        waited.as_secs(),
                        describe(status),
                        if all.trim().is_empty() { " and printed nothing" } else { "" }
                    ),
                    printed: all,
                }
                .into()
            }
            HandshakeError::NotDos { printed } | HandshakeError::TooMuchNoise { printed } => {
                let all = printed_both(stderr, printed);
                PeerError::NotDos {
                    detail: format!(
                        "the transport command {} before the dos handshake",
                        describe(status)
                    ),
                    printed: all,
                }
                .into()
            }
            HandshakeError::Malformed(_) | HandshakeError::Io(_) if status.is_some() => {
                PeerError::NotDos {
                    detail: format!("{h}; the transport command {}", describe(status)),
                    printed: stderr.to_string(),
                }
                .into()
            }
            _ => e,
        };
    }
    if let Some(PeerError::ConnectionLost { detail, .. }) = e.downcast_ref::<PeerError>() {
        return PeerError::ConnectionLost {
            detail: format!("{detail}; the transport command {}", describe(status)),
            printed: stderr.to_string(),
        }
        .into();
    }
    e
}

/// The command as a user would type it (arguments quoted where needed).
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The image's names under a registry address (tags and digest references).
async fn names_under(daemon: &Daemon, image_id: &str, addr: &str) -> Vec<String> {
    let prefix = format!("{addr}/");
    match daemon.api.inspect_image(image_id).await {
        Ok(i) => i
            .repo_tags
            .unwrap_or_default()
            .into_iter()
            .chain(i.repo_digests.unwrap_or_default())
            .filter(|n| n.starts_with(&prefix))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The manifest digest the push produced, from the image's repo digests.
async fn manifest_digest(daemon: &Daemon, image_id: &str, repo: &str) -> Result<String> {
    let info = daemon.inspect(image_id).await?;
    let prefix = format!("{repo}@");
    info.repo_digests
        .unwrap_or_default()
        .into_iter()
        .find_map(|d| d.strip_prefix(&prefix).map(str::to_owned))
        .ok_or_else(|| anyhow!("the push left no manifest digest for {repo}"))
}
