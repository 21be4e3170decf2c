//! What the far side asked for, and what sending it took.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::delta::shared::Shared;
use crate::engine::Packed;
use crate::progress::Board;

pub(super) const CHUNK: usize = 128 * 1024;

pub struct SendPlan {
    pub image_id: String,
    pub diff_ids: Vec<String>,
    /// Leading layers the far side already has.
    pub have: usize,
    /// Layers the far side holds the first bytes of (diffID → byte count).
    pub resume: HashMap<String, u64>,
    /// Uncompressed bytes of missing layers read so far (for the caller to
    /// judge the link's pace).
    pub read: Arc<AtomicU64>,
    /// The far side asked for the tar lengths of the layers it holds.
    pub sizes: bool,
    /// Compressed layer blobs in the export, by blob digest.
    pub packed: HashMap<String, Packed>,
    /// The far side has the source's manifest and takes blobs (its engine
    /// names images by their manifest): missing layers held as compressed
    /// blobs cross as they are, so it holds the same blobs and gives the
    /// image the same ID. Else they are unpacked here and cross as tars
    /// (zstd on the wire is smaller than their gzip).
    pub blobs: bool,
    /// What the progress display shows; told of each layer as it starts.
    pub board: Arc<Board>,
    /// A fan-out's layers, compressed once for every host; where the far
    /// side reads concatenated frames.
    pub shared: Option<Arc<Shared>>,
}

impl SendPlan {
    /// The layers the far side lacks.
    pub(super) fn missing(&self) -> HashSet<&str> {
        self.diff_ids[self.have..]
            .iter()
            .map(String::as_str)
            .collect()
    }
}

#[derive(Debug, Default)]
pub struct SendStats {
    pub layers_sent: usize,
    pub layers_skipped: usize,
    /// Bytes put into the stream before zstd: layer tars, and blobs as
    /// compressed as the source's store holds them.
    pub raw_bytes: u64,
    /// Uncompressed bytes not sent because the far side's spool had them.
    pub resumed_bytes: u64,
    /// The zstd level the stream ended at (it follows the link).
    pub zstd_level: i32,
    /// How the layers were read from the local daemon.
    pub source: &'static str,
    /// Layers sent as frames compressed once for a fan-out.
    pub shared: usize,
}
