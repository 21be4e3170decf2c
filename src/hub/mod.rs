//! `dos hub`: the way into a registry on a host's loopback, as an ssh
//! forced command. The registry is a real one the host runs (the CNCF
//! distribution registry, Debian's `docker-registry`, or any other bound to
//! 127.0.0.1); dos keeps no registry of its own, and garbage collection is
//! the registry's.
//!
//! ```text
//! command="dos hub --registry 127.0.0.1:5000 --push 'team/*'",restrict ssh-ed25519 … deployer
//! command="dos hub --registry 127.0.0.1:5000 --pull 'team/*'",restrict ssh-ed25519 … server
//! ```
//!
//! A client runs what it always runs: `dos push IMAGE --to HUB` arrives
//! as `dos pull IMAGE`, `dos fetch IMAGE --from HUB` as `dos send IMAGE`.
//! The hub answers each in the role the client expects:
//! - a push: the hub says it is one ([`FEATURE_HUB`]); the pusher's engine
//!   pushes through the session into the registry, which skips the blobs
//!   it has, through a gate that takes only this push's credentials and
//!   only that repository ([`crate::tunnel::forward::Forward`]);
//! - a fetch: the hub offers the image as a registry-path pusher does, and
//!   the fetcher's engine pulls it through the relay, reads of that
//!   repository only ([`crate::gate::Gate`]).
//!
//! `--push PATTERN` lets a key write (and read) the repositories it
//! matches; `--pull PATTERN` lets it read them. Nothing here listens on
//! any port: every request arrives as a stream of the ssh session.

mod registry;

use std::time::Duration;

use anyhow::{bail, Result};
use hyper::{Method, StatusCode};
use tokio::io::AsyncWriteExt;

use crate::allow::{image_from_original_command, verb_of, Repositories, Verb};
use crate::auth::Credentials;
use crate::engine::Ids;
use crate::error::{PeerError, SetupError};
use crate::gate::Gate;
use crate::mux::{self, Event, Liveness, Session, Side};
use crate::protocol::handshake::{
    self, Hello, Role, FEATURE_HEARTBEAT, FEATURE_HUB, FEATURE_TELLS,
};
use crate::protocol::message::{FarImage, Message, Offer};
use crate::reference::ImageRef;
use crate::registry::server::error;
use crate::tunnel::forward::Forward;

use registry::Registry;

pub struct HubOptions {
    /// The registry, `127.0.0.1:PORT` (or `[::1]:PORT`, `localhost:PORT`).
    pub registry: String,
    /// Repositories this key may push into (and read).
    pub push: Repositories,
    /// Repositories this key may read.
    pub pull: Repositories,
    /// SSH_ORIGINAL_COMMAND: `dos pull IMAGE` or `dos send IMAGE`.
    pub original_command: Option<String>,
    pub idle: Duration,
    pub hello: Duration,
}

/// Serve one client on stdin/stdout.
pub async fn hub(opts: HubOptions) -> Result<()> {
    crate::signal::run_interruptible(run(opts)).await
}

async fn run(opts: HubOptions) -> Result<()> {
    let host = opts
        .registry
        .rsplit_once(':')
        .map_or(opts.registry.as_str(), |(h, _)| h);
    if !matches!(host, "127.0.0.1" | "[::1]" | "localhost") {
        bail!(SetupError(format!(
            "dos hub --registry {}: the registry must be on this host's loopback (127.0.0.1:PORT): dos is the only way in",
            opts.registry
        )));
    }
    let cmd = opts.original_command.clone().ok_or_else(|| {
        SetupError("dos hub runs as an ssh forced command (SSH_ORIGINAL_COMMAND names what the key asked for)".into())
    })?;
    // What the client runs, and so the role it waits for us in.
    let verb = verb_of(&cmd).unwrap_or(Verb::Pull);
    let asked = image_from_original_command(&cmd, verb);
    let image = asked.as_ref().cloned().unwrap_or_default();
    let (repository, reference) = match ImageRef::parse(&image) {
        Ok(r) => {
            let reference = r
                .digest
                .clone()
                .unwrap_or_else(|| r.tag_or_latest().to_string());
            (r.path, reference)
        }
        Err(_) => (String::new(), String::new()),
    };
    let refusal = match (&asked, verb) {
        (Err(_), _) => Some(format!(
            "this ssh key may only run `dos pull IMAGE` (a push into the hub) or `dos send IMAGE` (a fetch from it); refused to run: {cmd:?}"
        )),
        (Ok(_), _) if repository.is_empty() => Some(format!("{image:?} is not an image reference")),
        (Ok(_), Verb::Pull) if !opts.push.allows(&repository) => Some(format!(
            "this key may not push into {repository} on this hub (dos hub --push {})",
            opts.push.describe()
        )),
        (Ok(_), Verb::Send) if !opts.push.allows(&repository) && !opts.pull.allows(&repository) => {
            Some(format!(
                "this key may not read {repository} on this hub (dos hub --pull {})",
                opts.pull.describe()
            ))
        }
        _ => None,
    };
    // Our hello first: a fetcher waits for it; a pusher sends its own
    // without waiting.
    let mut features = vec![FEATURE_HEARTBEAT.to_string(), FEATURE_TELLS.to_string()];
    let role = match verb {
        Verb::Pull => {
            features.push(FEATURE_HUB.into());
            Role::Pull
        }
        Verb::Send => Role::Push,
    };
    let hello = Hello {
        role,
        image: image.clone(),
        release: env!("CARGO_PKG_VERSION").into(),
        features,
        delta: None,
    };
    let mut stdout = tokio::io::stdout();
    let mut stdin = crate::stdio::stdin();
    stdout.write_all(&handshake::encode(&hello)).await?;
    stdout.flush().await?;
    let (peer, leftover) = match handshake::read_within(&mut stdin, opts.hello).await {
        Ok(r) => r,
        // Not a dos client (a person at a plain ssh prompt): the refusal
        // is what it needs to read.
        Err(_) if refusal.is_some() => bail!("{}", refusal.unwrap_or_default()),
        Err(e) => return Err(anyhow::Error::new(e).context("reading the client's handshake")),
    };
    let liveness = Liveness::with_peer(peer.has(FEATURE_HEARTBEAT), opts.idle);
    let side = if role == Role::Pull {
        Side::Dialer
    } else {
        Side::Listener
    };
    let mut session = mux::start(stdin, leftover, stdout, side, liveness);
    let mux = session.mux.clone();
    let wanted = if role == Role::Pull {
        Role::Push
    } else {
        Role::Pull
    };
    let result = match refusal {
        Some(r) => Err(PeerError::Refused(r).into()),
        None if peer.role != wanted => Err(PeerError::Refused(format!(
            "the client speaks as a dos {:?}, not what `{cmd}` asks for",
            peer.role
        ))
        .into()),
        None if !ImageRef::parse(&peer.image).is_ok_and(|p| p.path == repository) => {
            Err(PeerError::Refused(format!(
                "the client's handshake names {}, its command {image}",
                peer.image
            ))
            .into())
        }
        None => {
            let registry = Registry::new(&opts.registry);
            match verb {
                Verb::Pull => take(&mut session, &registry, &repository, &reference).await,
                Verb::Send => give(&mut session, &registry, &repository, &reference).await,
            }
        }
    };
    match &result {
        Ok(Some(far)) => tracing::debug!("dos: hub: {repository}:{reference} is {}", far.config),
        Ok(None) => {}
        Err(e) => {
            let msg = Message::Outcome {
                ok: false,
                message: match e.downcast_ref::<PeerError>() {
                    Some(PeerError::Refused(m) | PeerError::FarFailure(m)) => m.clone(),
                    _ => format!("{e:#}"),
                },
                refused: matches!(e.downcast_ref::<PeerError>(), Some(PeerError::Refused(_))),
                image_id: None,
                far: None,
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), mux.control(msg.to_bytes())).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), mux.shutdown()).await;
    // On this side's stderr (the client's terminal, or a person at an ssh
    // prompt) a refusal is this side's own word.
    result
        .map(|_| ())
        .map_err(|e| match e.downcast_ref::<PeerError>() {
            Some(PeerError::Refused(m)) => anyhow::anyhow!("{m}"),
            _ => e,
        })
}

/// A push into the registry: credentials for this session, the pusher's
/// engine's requests through the gate, then the manifest it pushed checked
/// against what the registry holds under the tag.
async fn take(
    session: &mut Session,
    registry: &Registry,
    repository: &str,
    reference: &str,
) -> Result<Option<FarImage>> {
    let creds = Credentials::generate("dos-hub");
    let mux = session.mux.clone();
    mux.control(
        Message::Hub {
            username: creds.username.clone(),
            password: creds.password.clone(),
        }
        .to_bytes(),
    )
    .await;
    let forward = Forward::new(registry.base(), None, creds, false, repository.to_string());
    loop {
        match session.next().await {
            Some(Event::Open(stream)) => {
                let f = forward.clone();
                crate::http::serve_stream(&mux, stream, move |req| {
                    let f = f.clone();
                    async move {
                        // Deleting is the registry's own garbage collection.
                        if req.method() == Method::DELETE {
                            return error(
                                StatusCode::FORBIDDEN,
                                "DENIED",
                                "this hub does not delete",
                            );
                        }
                        f.handle(req).await
                    }
                });
            }
            Some(Event::Control(b)) => match Message::from_bytes(&b) {
                Ok(Message::Pushed { manifest }) => {
                    let held = registry
                        .resolve(repository, reference)
                        .await?
                        .ok_or_else(|| {
                            PeerError::FarFailure(format!(
                                "the registry has no {repository}:{reference} after the push"
                            ))
                        })?;
                    if held.manifest != manifest {
                        bail!(PeerError::FarFailure(format!(
                            "the registry holds {} under {repository}:{reference}, the pusher pushed {manifest}",
                            held.manifest
                        )));
                    }
                    let far = FarImage {
                        engine: format!("the hub's registry ({})", registry.base()),
                        ids: Ids::Manifest,
                        config: held.config,
                        diff_ids: held.diff_ids,
                    };
                    session
                        .mux
                        .control(
                            Message::Outcome {
                                ok: true,
                                refused: false,
                                message: format!(
                                    "{repository}:{reference} is in the hub's registry"
                                ),
                                image_id: Some(held.manifest),
                                far: Some(far.clone()),
                            }
                            .to_bytes(),
                        )
                        .await;
                    return Ok(Some(far));
                }
                Ok(other) => bail!(PeerError::Refused(format!("unexpected message {other:?}"))),
                Err(e) => bail!(PeerError::lost(format!("unreadable control message: {e}"))),
            },
            None => bail!(PeerError::lost(session.end().await)),
        }
    }
}

/// A fetch: the image offered as a registry-path pusher offers it, pinned
/// by manifest digest, and the fetcher's engine's reads served until it
/// reports.
async fn give(
    session: &mut Session,
    registry: &Registry,
    repository: &str,
    reference: &str,
) -> Result<Option<FarImage>> {
    let held = registry
        .resolve(repository, reference)
        .await?
        .ok_or_else(|| {
            PeerError::FarFailure(format!(
                "the hub's registry has no {repository}:{reference}"
            ))
        })?;
    let creds = Credentials::generate("dos-pull");
    let gate = Gate::new(registry.base(), None, creds.clone(), repository.to_string());
    let mux = session.mux.clone();
    let offer = Offer {
        repository: repository.to_string(),
        manifest: held.manifest.clone(),
        image_id: held.config.clone(),
        username: creds.username.clone(),
        password: creds.password.clone(),
    };
    mux.control(Message::Registry { offer }.to_bytes()).await;
    loop {
        match session.next().await {
            Some(Event::Open(stream)) => {
                let g = gate.clone();
                crate::http::serve_stream(&mux, stream, move |req| g.clone().handle(req));
            }
            Some(Event::Control(b)) => match Message::from_bytes(&b) {
                Ok(Message::Outcome { ok: true, .. }) => return Ok(None),
                // The fetcher's failure is its own to report.
                Ok(Message::Outcome { message, .. }) => {
                    tracing::debug!("the fetcher failed: {message}");
                    return Ok(None);
                }
                Ok(other) => bail!(PeerError::Refused(format!("unexpected message {other:?}"))),
                Err(e) => bail!(PeerError::lost(format!("unreadable control message: {e}"))),
            },
            None => bail!(PeerError::lost(session.end().await)),
        }
    }
}
