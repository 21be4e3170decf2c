//! `dos push IMAGE CMD...`: put the image in a registry on this machine,
//! start CMD, and serve the far `dos pull` through a gated relay.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::io::AsyncWriteExt;

use crate::auth::Credentials;
use crate::docker::Daemon;
use crate::error::PeerError;
use crate::gate::Gate;
use crate::mux::{self, Event, Side};
use crate::progress::Progress;
use crate::protocol::handshake::{self, HandshakeError, Hello, Offer, Role};
use crate::protocol::message::Message;
use crate::reference::ImageRef;
use crate::registry::Registry;
use crate::signal::interruptible;
use crate::transport::{describe, Transport};

pub struct PushOptions {
    pub image: String,
    pub command: Vec<String>,
    /// Use the registry already listening on 127.0.0.1:PORT.
    pub registry_port: Option<u16>,
}

/// What a successful push did.
#[derive(Debug)]
pub struct PushReport {
    pub image_id: String,
    /// Bytes written to and read from the transport.
    pub wire_out: u64,
    pub wire_in: u64,
    pub elapsed: Duration,
}

pub async fn push(opts: PushOptions) -> Result<PushReport> {
    let image = ImageRef::parse(&opts.image)?;
    if opts.command.is_empty() {
        anyhow::bail!("no transport command given (e.g. dos push app:1 ssh host dos pull app:1)");
    }
    // The image must exist before anything is started or tagged.
    let daemon = Daemon::connect().await?;
    let info = daemon.inspect(&opts.image).await?;
    let image_id = info.id.context("the daemon reported no image ID")?;

    // Where the image goes first.
    let registry;
    let (addr, push_creds) = match opts.registry_port {
        Some(port) => (format!("127.0.0.1:{port}"), None),
        None => {
            registry = Registry::start().await?;
            (
                registry.addr().to_string(),
                Some(registry.credentials().clone()),
            )
        }
    };
    let repo = format!("{addr}/{}", image.path);
    let tag = image.tag.clone().unwrap_or_else(|| "latest".into());

    // Tag, push, and remove every name this step added, whatever happened.
    let before = names_under(&daemon, &image_id, &addr).await;
    eprintln_status(&format!("dos: preparing {image} ({})", short(&image_id)));
    let pushed = async {
        daemon.tag(&opts.image, &repo, &tag).await?;
        let creds = push_creds
            .as_ref()
            .map(|c| c.docker(&addr))
            .unwrap_or_default();
        interruptible(daemon.push(&repo, &tag, creds)).await?;
        manifest_digest(&daemon, &image_id, &repo).await
    }
    .await;
    for n in names_under(&daemon, &image_id, &addr).await {
        if !before.contains(&n) {
            if let Err(e) = daemon.untag(&n).await {
                tracing::warn!("{e:#}");
            }
        }
    }
    let manifest =
        pushed.with_context(|| format!("pushing {image} into the registry at {addr}"))?;

    // The relay: the far side's requests go through the gate to the registry.
    let pull_creds = Credentials::generate("dos-pull");
    let gate = Gate::new(
        format!("http://{addr}"),
        push_creds,
        pull_creds.clone(),
        image.path.clone(),
    );
    let hello = Hello {
        role: Role::Push,
        image: opts.image.clone(),
        release: env!("CARGO_PKG_VERSION").into(),
        offer: Some(Offer {
            repository: image.path.clone(),
            tag: tag.clone(),
            manifest: manifest.clone(),
            image_id: image_id.clone(),
            username: pull_creds.username.clone(),
            password: pull_creds.password.clone(),
        }),
    };
    let mut transport = Transport::spawn(&opts.command)?;
    let result = interruptible(session(&mut transport, &hello, &image, gate)).await;
    let (status, stderr) = transport.finish(Duration::from_secs(5)).await;
    let (far_id, wire_out, wire_in, elapsed) = result.map_err(|e| explain(e, status, &stderr))?;
    if far_id != image_id {
        return Err(PeerError::FarFailure(format!(
            "the far daemon reports image {far_id}, expected {image_id}"
        ))
        .into());
    }
    Ok(PushReport {
        image_id,
        wire_out,
        wire_in,
        elapsed,
    })
}

/// Talk to the far dos until it reports an outcome.
async fn session(
    t: &mut Transport,
    hello: &Hello,
    image: &ImageRef,
    gate: std::sync::Arc<Gate>,
) -> Result<(String, u64, u64, Duration)> {
    let mut stdin = t.stdin.take().context("transport stdin")?;
    let mut stdout = t.stdout.take().context("transport stdout")?;
    // Our hello goes first; a far side that isn't dos just won't read it.
    let _ = async {
        stdin.write_all(&handshake::encode(hello)).await?;
        stdin.flush().await
    }
    .await;
    let (peer, leftover) = handshake::read(&mut stdout).await?;
    if peer.role != Role::Pull {
        return Err(PeerError::Refused("the far side is not a dos pull".into()).into());
    }
    let wanted = ImageRef::parse(&peer.image)
        .map_err(|e| PeerError::Refused(format!("the far side asked for an invalid image: {e}")))?;
    if !wanted.same_as(image) {
        return Err(PeerError::Refused(format!(
            "this side offers {} but the far side asked for {}",
            hello.image, peer.image
        ))
        .into());
    }
    tracing::debug!(release = %peer.release, "far dos ready");

    let (mux, mut events, reader) = mux::start(stdout, leftover, stdin, Side::Listener);
    let counter_mux = mux.clone();
    let progress = Progress::start(
        "transfer",
        std::sync::Arc::new(move || {
            let (o, i) = counter_mux.wire_bytes();
            o + i
        }),
    );
    let outcome = loop {
        match events.recv().await {
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
                    image_id,
                }) => break Ok((ok, message, image_id)),
                Err(e) => {
                    break Err(anyhow!(PeerError::ConnectionLost {
                        detail: format!("unreadable control message: {e}"),
                        printed: String::new(),
                    }))
                }
            },
            None => {
                let why = match reader.await {
                    Ok(Ok(())) => {
                        "the far side closed the stream before reporting a result".to_string()
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                break Err(anyhow!(PeerError::ConnectionLost {
                    detail: why,
                    printed: String::new(),
                }));
            }
        }
    };
    let (bytes, took) = progress.finish(match &outcome {
        Ok((true, _, _)) => "done",
        _ => "failed",
    });
    mux.shutdown().await;
    let (o, i) = mux.wire_bytes();
    debug_assert!(o + i >= bytes.min(o + i));
    match outcome? {
        (true, _, Some(id)) => Ok((id, o, i, took)),
        (true, _, None) => Err(PeerError::FarFailure("no image ID reported".into()).into()),
        (false, message, _) => Err(PeerError::FarFailure(message).into()),
    }
}

/// Add what the far side printed (and how the command ended) to errors
/// where the user needs it to act.
fn explain(
    e: anyhow::Error,
    status: Option<std::process::ExitStatus>,
    stderr: &str,
) -> anyhow::Error {
    if let Some(h) = e.downcast_ref::<HandshakeError>() {
        return match h {
            HandshakeError::NotDos { printed } | HandshakeError::TooMuchNoise { printed } => {
                let mut all = stderr.trim_end().to_string();
                if !printed.is_empty() {
                    if !all.is_empty() {
                        all.push('\n');
                    }
                    all.push_str(printed);
                }
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

fn short(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

fn eprintln_status(s: &str) {
    tracing::info!("{s}");
}
