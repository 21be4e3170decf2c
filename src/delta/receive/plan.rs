//! What the far side expects of the stream: the image, the layers it
//! lacks, where they may come from, and the source's manifest.

use std::collections::HashMap;

use crate::delta::spool::{Entry, Spool};
use crate::engine::oci::{self, Descriptor, Manifest};
use crate::engine::{Compression, Layout};

pub(super) const CHUNK: usize = 128 * 1024;

pub struct ReceivePlan {
    /// Told the diffID of each layer received that checks out.
    pub verified: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    pub image_id: String,
    pub diff_ids: Vec<String>,
    pub have: usize,
    /// Where arriving layers are kept for a rerun (None: off).
    pub spool: Option<Spool>,
    /// Spool files this transfer holds, by diffID: those offered to the
    /// pusher for resuming, and those written since.
    pub held: HashMap<String, Entry>,
    /// The form the far engine loads.
    pub layout: Layout,
    /// OCI layout: the descriptors the engine holds the first `have` layers
    /// under; empty where it finds them by diffID (then they are named as
    /// plain tars, with the lengths the pusher sends).
    pub blobs: Vec<Descriptor>,
    /// The source's manifest, where the pusher sent it: layers may arrive
    /// as the compressed blobs it names.
    pub source: Option<SourceManifest>,
    /// The engine names images by their manifest: where every layer ends
    /// up under the descriptor the source's manifest gives it, that
    /// manifest is loaded as it is (the same image ID as the source).
    pub keep_manifest: bool,
}

/// The source's manifest as the pusher sent it, checked against its plan.
pub struct SourceManifest {
    pub(super) body: Vec<u8>,
    pub(super) parsed: Manifest,
}

impl SourceManifest {
    /// The pusher's manifest, if it is one of the image with `config` and
    /// these layers.
    pub fn check(body: String, config: &str, diff_ids: &[String]) -> Option<SourceManifest> {
        let body = body.into_bytes();
        let parsed = Manifest::parse(&body)?;
        let fits = parsed.config.digest == config
            && parsed.layers.len() == diff_ids.len()
            && parsed
                .layers
                .iter()
                .zip(diff_ids)
                .all(|(l, d)| Compression::of(&l.media_type).is_some() || l.digest == *d);
        fits.then_some(SourceManifest { body, parsed })
    }

    pub fn digest(&self) -> String {
        oci::sha256(&self.body)
    }

    /// The compressed blob the source holds layer `i` as, if it is one.
    pub fn blob(&self, i: usize) -> Option<&Descriptor> {
        self.parsed
            .layers
            .get(i)
            .filter(|l| Compression::of(&l.media_type).is_some())
    }
}

impl ReceivePlan {
    pub(super) fn tell_verified(&self, diff_id: &str) {
        if let Some(tx) = &self.verified {
            let _ = tx.send(diff_id.to_string());
        }
    }

    /// The image is loaded: its spooled layers are no longer needed.
    pub fn clean_spool(&mut self) {
        for (_, e) in self.held.drain() {
            e.remove();
        }
    }
}
