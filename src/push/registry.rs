//! The registry plan from the pushing side: push into a registry here (or
//! the CI's), offer it, and serve the far daemon's pull through the gate.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

use crate::auth::Credentials;
use crate::delta::send::SendStats;
use crate::docker::Daemon;
use crate::error::PeerError;
use crate::gate::Gate;
use crate::mux::{Event, Session};
use crate::protocol::message::{Message, Offer};
use crate::registry::Registry;
use crate::setup::{Exposure, Plan};
use crate::tunnel::forward::Forward;
use crate::tunnel::ngrok::Ngrok;
use crate::tunnel::{self, Tunnel};

use super::options::PushOptions;
use super::outcome::{outcome, Reported};
use super::source::Source;

/// Registry: push into the registry, offer it, serve the relay until the
/// far side reports.
pub(super) async fn drive_registry(
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
                let g = gate.clone();
                crate::http::serve_stream(&mux, stream, move |req| g.clone().handle(req));
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
pub(super) async fn push_to_registry(
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
