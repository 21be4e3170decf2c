//! A push into a hub ([`crate::hub`]): the local engine pushes into the
//! hub's registry itself, through a listener on this machine's loopback
//! whose connections cross as streams of the session. The registry skips
//! the blobs it has; the hub then checks the manifest it holds.

use anyhow::{bail, Result};
use tokio::net::TcpListener;

use crate::auth::Credentials;
use crate::delta::send::SendStats;
use crate::docker::Daemon;
use crate::error::PeerError;
use crate::mux::{Event, Session};
use crate::protocol::message::Message;

use super::outcome::{outcome, Reported};
use super::registry::push_to_registry;
use super::source::Source;

pub(super) async fn drive_hub(
    session: &mut Session,
    src: &Source,
    daemon: &Daemon,
) -> Result<(Reported, Option<SendStats>)> {
    let mux = session.mux.clone();
    // The hub's credentials for this push come first.
    let creds = match next_message(session).await? {
        Message::Hub { username, password } => Credentials { username, password },
        Message::Outcome {
            ok,
            message,
            refused,
            image_id,
            far,
        } => {
            outcome(ok, message, refused, image_id, far)?;
            bail!(PeerError::FarFailure(
                "the hub ended the session before the push".into()
            ));
        }
        other => bail!(PeerError::FarFailure(format!(
            "unexpected message {other:?}"
        ))),
    };
    // Only this engine's push gets through: the hub's gate wants the
    // credentials, which only the engine is given.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let m = mux.clone();
    let relay = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            match m.open().await {
                Ok(s) => {
                    m.attach(s, sock);
                }
                Err(e) => tracing::debug!("hub stream: {e}"),
            }
        }
    }));
    tracing::info!("dos: pushing {} into the hub's registry", src.image_str);
    let manifest = tokio::select! {
        r = push_to_registry(daemon, src, &addr, Some(&creds)) => r?,
        why = mux.closed() => bail!(PeerError::lost(format!("the session ended during the push: {why}"))),
    };
    drop(relay);
    mux.control(Message::Pushed { manifest }.to_bytes()).await;
    match next_message(session).await? {
        Message::Outcome {
            ok,
            message,
            refused,
            image_id,
            far,
        } => outcome(ok, message, refused, image_id, far).map(|r| (r, None)),
        other => bail!(PeerError::FarFailure(format!(
            "unexpected message {other:?}"
        ))),
    }
}

/// The hub's next control message (it opens no streams here).
async fn next_message(session: &mut Session) -> Result<Message> {
    loop {
        match session.next().await {
            Some(Event::Control(b)) => {
                return Message::from_bytes(&b).map_err(|e| {
                    PeerError::lost(format!("unreadable control message: {e}")).into()
                })
            }
            Some(Event::Open(s)) => session.mux.reject(s, "unexpected stream").await,
            None => bail!(PeerError::lost(session.end().await)),
        }
    }
}
