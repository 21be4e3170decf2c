//! What the far side's word, the session's end and the transport's exit
//! mean to the user: the check that the far side holds the image sent, and
//! errors completed with what the far side printed.

use anyhow::{bail, Result};

use crate::engine::Ids;
use crate::error::PeerError;
use crate::protocol::handshake::HandshakeError;
use crate::protocol::message::FarImage;

use super::source::Source;

/// Is what the far side reports the image sent? The config digest and the
/// layers must be the source's, and a far engine that names images by their
/// config must name it by this one. Returns the local ID where the two IDs
/// differ by design (a containerd store names an image by its manifest, and
/// dos writes its own manifest over plain-tar layers).
pub(super) fn same_image(
    src: &Source,
    far_id: &str,
    far: Option<&FarImage>,
) -> Result<Option<String>> {
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

/// A write into a stream failed because its other end is gone (the far
/// side reset it, or the session ended), not because of this side.
pub(super) fn cut_off(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The far side said why (a refusal, a failure, its handshake), or the
/// user interrupted: not to be recast as a lost link.
pub(super) fn is_peer_word(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<PeerError>() || c.is::<HandshakeError>() || c.is::<crate::error::Interrupted>()
    })
}

/// The far side's image ID and its view of the image.
pub(super) type Reported = (String, Option<FarImage>);

pub(super) fn outcome(
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
