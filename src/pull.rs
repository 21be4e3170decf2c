//! `dos pull IMAGE`: the far end. Speaks dos on stdin/stdout, lets the local
//! daemon pull through a loopback relay, and reports the outcome.
//!
//! stdout IS the protocol here: nothing else may be written to it.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::auth::Credentials;
use crate::docker::Daemon;
use crate::error::PeerError;
use crate::mux::{self, Mux, Side};
use crate::protocol::handshake::{self, Hello, Offer, Role};
use crate::protocol::message::Message;
use crate::reference::ImageRef;

pub struct PullOptions {
    pub image: String,
}

pub async fn pull(opts: PullOptions) -> Result<()> {
    let wanted = ImageRef::parse(&opts.image)?;
    wanted.require_taggable(&opts.image)?;
    let mut stdout = tokio::io::stdout();
    let mut stdin = tokio::io::stdin();

    let hello = Hello {
        role: Role::Pull,
        image: opts.image.clone(),
        release: env!("CARGO_PKG_VERSION").into(),
        offer: None,
    };
    stdout.write_all(&handshake::encode(&hello)).await?;
    stdout.flush().await?;
    let (peer, leftover) = handshake::read(&mut stdin)
        .await
        .context("reading the pusher's handshake")?;
    let (mux, _events, _reader) = mux::start(stdin, leftover, stdout, Side::Dialer);

    let result = serve(&mux, &wanted, &opts.image, peer).await;
    let msg = match &result {
        Ok(id) => Message::Outcome {
            ok: true,
            message: format!("{} is on the far daemon", opts.image),
            image_id: Some(id.clone()),
        },
        Err(e) => Message::Outcome {
            ok: false,
            message: format!("{e:#}"),
            image_id: None,
        },
    };
    mux.control(msg.to_bytes()).await;
    // Bounded: if the pusher is gone, the write fails or stalls; don't hang.
    let _ = tokio::time::timeout(Duration::from_secs(10), mux.shutdown()).await;
    result.map(|_| ())
}

/// Check the offer, run the pull, and return the resulting image ID.
async fn serve(mux: &Mux, wanted: &ImageRef, wanted_str: &str, peer: Hello) -> Result<String> {
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
    let offer = peer
        .offer
        .ok_or_else(|| PeerError::Refused("the pusher sent no offer".into()))?;
    check_offer(&offer)?;

    let daemon = Daemon::connect().await?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the relay to 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let accept_mux = mux.clone();
    let acceptor = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            match accept_mux.open().await {
                Ok(stream) => {
                    accept_mux.attach(stream, sock);
                }
                Err(e) => tracing::warn!("relay: {e}"),
            }
        }
    });

    let source = format!("{addr}/{}", offer.repository);
    let creds = Credentials {
        username: offer.username.clone(),
        password: offer.password.clone(),
    };
    tracing::info!("dos: pulling {wanted_str} through the relay");
    let pulled = daemon
        .pull(&source, &offer.manifest, creds.docker(&addr.to_string()))
        .await;
    acceptor.abort();
    let finished = async {
        pulled?;
        let got = daemon
            .inspect(&format!("{source}@{}", offer.manifest))
            .await?;
        let id = got.id.context("the daemon reported no image ID")?;
        if id != offer.image_id {
            bail!(PeerError::FarFailure(format!(
                "pulled image {id}, but the pusher offered {}",
                offer.image_id
            )));
        }
        daemon
            .tag(&id, &wanted.repository(), wanted.tag_or_latest())
            .await?;
        Ok(id)
    }
    .await;
    // Remove the relay's names (a digest reference under 127.0.0.1:PORT)
    // whether or not the pull worked.
    if let Err(e) = daemon
        .untag_all_under(&offer.image_id, &format!("{addr}/"))
        .await
    {
        tracing::warn!("{e:#}");
    }
    finished
}

fn check_offer(o: &Offer) -> Result<()> {
    let ok = crate::registry::path::valid_name(&o.repository)
        && crate::registry::path::Digest::parse(&o.manifest).is_some()
        && crate::registry::path::Digest::parse(&o.image_id).is_some();
    if ok {
        Ok(())
    } else {
        Err(anyhow!(PeerError::Refused(
            "the pusher's offer is malformed".into()
        )))
    }
}
