//! A `dos send` that can't send tells the fetcher why in a session of its
//! own: the fetcher then reports the far side's refusal or failure, not
//! that the far side isn't dos.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;

use super::{PushOptions, DEFAULT_IDLE};
use crate::error::PeerError;
use crate::mux::{self, Liveness, Side};
use crate::protocol::handshake::{self, Hello, Role, FEATURE_HEARTBEAT, FEATURE_TELLS};
use crate::protocol::message::Message;

/// A `dos send` that won't send (a forced command's refusal) tells the
/// fetcher why, in a session of its own, and fails with it.
pub async fn refuse_fetcher(image: &str, within: Duration, why: String) -> anyhow::Error {
    let told = tell(
        image,
        within,
        Message::Outcome {
            ok: false,
            message: why.clone(),
            refused: true,
            image_id: None,
            far: None,
        },
    )
    .await;
    if let Err(t) = told {
        tracing::debug!("telling the fetcher: {t:#}");
    }
    anyhow::anyhow!(why)
}

/// A `dos send` that can't start its session still speaks dos: the
/// fetcher learns why from it (not that the far side isn't dos). Returns
/// the error, for this side's exit code.
pub(super) async fn tell_fetcher(opts: &PushOptions, e: anyhow::Error) -> anyhow::Error {
    let refused = matches!(e.downcast_ref::<PeerError>(), Some(PeerError::Refused(_)));
    let told = tell(
        &opts.image,
        opts.hello,
        Message::Outcome {
            ok: false,
            message: format!("{e:#}"),
            refused,
            image_id: None,
            far: None,
        },
    )
    .await;
    if let Err(t) = told {
        tracing::debug!("telling the fetcher: {t:#}");
    }
    e
}

/// One message to the fetcher in a session of its own: our hello, its
/// hello, the message, the end.
async fn tell(image: &str, within: Duration, msg: Message) -> Result<()> {
    let mut stdin = crate::stdio::stdin();
    let mut stdout = tokio::io::stdout();
    let hello = Hello {
        role: Role::Push,
        image: image.to_string(),
        release: env!("CARGO_PKG_VERSION").into(),
        features: vec![FEATURE_HEARTBEAT.into(), FEATURE_TELLS.into()],
        delta: None,
    };
    stdout.write_all(&handshake::encode(&hello)).await?;
    stdout.flush().await?;
    let (peer, leftover) = handshake::read_within(&mut stdin, within).await?;
    let liveness = Liveness::with_peer(peer.has(FEATURE_HEARTBEAT), DEFAULT_IDLE);
    let session = mux::start(stdin, leftover, stdout, Side::Listener, liveness);
    tokio::time::timeout(Duration::from_secs(10), async {
        session.mux.control(msg.to_bytes()).await;
        session.mux.shutdown().await
    })
    .await
    .context("the fetcher did not read")?;
    Ok(())
}
