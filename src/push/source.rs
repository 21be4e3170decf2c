//! The image a push sends, as the local engine holds it.

use crate::engine::{self, Engine};
use crate::reference::ImageRef;

/// The image offered: its reference, as the user wrote it, and as the
/// local engine has it.
pub(super) struct Source {
    pub image: ImageRef,
    pub image_str: String,
    /// The image as the local engine has it (its ID, config digest, layers).
    pub local: engine::Image,
    pub engine: Engine,
}
