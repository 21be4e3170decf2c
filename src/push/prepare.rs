//! What a push (or a send) makes ready before its session: the local
//! engine, the image, and the readers of its layers.

use std::time::Duration;

use anyhow::{bail, Result};

use super::delta::Layers;
use super::source::Source;
use super::{BoxRead, PushOptions, Via, Wire};
use crate::capture;
use crate::delta::content::ContentStore;
use crate::delta::send;
use crate::delta::store::LocalStore;
use crate::docker::Daemon;
use crate::engine::Engine;
use crate::error::SetupError;
use crate::reference::ImageRef;
use crate::setup::Plan;
use crate::transport::Transport;

/// What a session sends, made ready before (and while) it connects.
pub(super) struct Prepared {
    pub src: Source,
    pub daemon: Daemon,
    pub layers: Option<Layers<BoxRead>>,
    pub capture: Option<capture::Session>,
    pub plan: Plan,
}

/// The local engine, the image and the readers of its layers; the
/// transport command started (`Wire::Command`) as soon as the image is
/// known to exist, so that it connects meanwhile.
pub(super) async fn prepare(
    opts: &PushOptions,
    wire: Wire,
) -> Result<(Prepared, Option<Transport>)> {
    let image = ImageRef::parse(&opts.image)?;
    if wire == Wire::Command && opts.command.is_empty() {
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
    let mut transport = match wire {
        Wire::Command => Some(Transport::spawn(&opts.command)?),
        Wire::Stdio => None,
    };
    // While the transport connects: what the transfer needs to know of the
    // image (on a containerd store, its manifest, through a push).
    let local = match engine.image(&opts.image).await {
        Ok(l) => l,
        Err(e) => {
            if let Some(t) = transport.as_mut() {
                t.finish(Duration::ZERO).await;
            }
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
        shared: opts.shared.clone(),
    });
    let prepared = Prepared {
        src,
        daemon,
        layers,
        capture,
        plan,
    };
    Ok((prepared, transport))
}
