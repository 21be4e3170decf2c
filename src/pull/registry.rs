//! The registry plan on the receiving side: the engine pulls through a
//! relay on this machine's loopback, then its names under the relay go.

use anyhow::{anyhow, bail, Context, Result};
use tokio::net::TcpListener;

use crate::auth::Credentials;
use crate::engine::{Engine, Loaded};
use crate::error::PeerError;
use crate::mux::Mux;
use crate::protocol::message::Offer;
use crate::reference::ImageRef;
use crate::registry::client::Client;
use crate::registry::path::{valid_name, Digest};
use crate::relay::Relay;

/// Let the engine pull the offered image through a relay on loopback, tag
/// it as wanted, and remove the relay's names.
pub(super) async fn via_registry(
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
