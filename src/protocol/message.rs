//! Control messages: JSON in `Control` frames on stream 0.
//!
//! After the handshake the pusher sends a plan ([`Message::Registry`] or
//! [`Message::Delta`]); for a delta the puller answers [`Message::Have`];
//! the puller ends the session with [`Message::Outcome`].

use serde::{Deserialize, Serialize};

use crate::engine::Ids;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Plan: pull the image through the relay registry.
    Registry { offer: Offer },
    /// Plan: the pusher will stream the layers the far side lacks.
    Delta {
        image_id: String,
        /// The image's layers, bottom first.
        diff_ids: Vec<String>,
        /// The source's manifest, byte for byte, where its engine names
        /// images by their manifest (the containerd store): its layers may
        /// then cross as the compressed blobs it names, and a far engine
        /// of the same kind that ends up holding every blob it names loads
        /// it as it is, so the image gets the same ID at both ends.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        manifest: Option<String>,
        /// The image's config, as in [`crate::protocol::handshake::DeltaPlan`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config: Option<String>,
    },
    /// The puller has the first `layers` layers' chains (and maybe the image),
    /// and the first bytes of some of the others in its resume spool.
    Have {
        layers: usize,
        image: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        resume: Vec<Resume>,
        /// The far engine's load names the held layers: send their tar
        /// lengths (a sizes record) before the end of the stream.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sizes: bool,
        /// Send the layers the source holds compressed as those blobs (the
        /// far engine names images by their manifest: the source's blobs
        /// give the source's ID); else as tars, zstd on the wire.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        blobs: bool,
        /// With `image`: the far side tags the image it has only once the
        /// pusher sends its config (a stream with no layer), which proves
        /// the pusher holds the image ([`crate::delta::proof`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        prove: bool,
    },
    /// A hub's credentials for this session's push into its registry
    /// (only requests bearing them pass its gate).
    Hub { username: String, password: String },
    /// The pusher's engine pushed the image into the hub: this manifest.
    Pushed { manifest: String },
    /// The puller checked a layer it received against its diffID (sent
    /// only to a pusher that offers [`crate::protocol::handshake::FEATURE_PROGRESS`]).
    Verified { diff_id: String },
    /// The puller's final word: the image is in place (with its ID), or why not.
    Outcome {
        ok: bool,
        message: String,
        /// Not ok because the far side would not take it (an allow-list, a
        /// forced command), as opposed to trying and failing.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        refused: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image_id: Option<String>,
        /// The far side's view of the image (absent from older far sides,
        /// whose engines name images by their config).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        far: Option<FarImage>,
    },
}

/// How the far engine holds the image it reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FarImage {
    /// The engine, e.g. "Docker 28.5.2 (containerd image store)".
    pub engine: String,
    /// How it names images.
    pub ids: Ids,
    /// The image's config digest.
    pub config: String,
    /// Its layers, bottom first, as the far engine reports them.
    pub diff_ids: Vec<String>,
}

/// The far side holds the first `offset` bytes of a layer's tar (from an
/// interrupted transfer); the pusher sends only the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub diff_id: String,
    pub offset: u64,
}

/// How to fetch the image through the relay, and the one-time credentials
/// the relay checks. The stream carrying it is the user's own channel
/// (usually ssh), so the secret never touches a command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Repository path inside the relay registry (e.g. `team/app`).
    pub repository: String,
    /// The manifest digest to pull (pinned: a tag could move meanwhile).
    pub manifest: String,
    /// The config digest of the image the far side must end up with
    /// (the image ID on engines that name images by their config).
    pub image_id: String,
    pub username: String,
    pub password: String,
}

impl Message {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Message always serializes")
    }

    pub fn from_bytes(b: &[u8]) -> Result<Message, serde_json::Error> {
        serde_json::from_slice(b)
    }
}
