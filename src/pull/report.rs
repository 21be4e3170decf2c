//! What a receive did, and the lines a fetch ends with.

use std::time::Duration;

use crate::protocol::message::FarImage;

/// What a receive did.
#[derive(Debug)]
pub struct Received {
    /// The image's ID in this engine.
    pub image_id: String,
    /// This engine's view of it.
    pub here: FarImage,
    /// "delta" or "registry".
    pub path: &'static str,
    /// Delta only: the layers that were here already, and those that came.
    pub layers_present: usize,
    pub layers_received: usize,
    /// Bytes read from and written to the stream.
    pub wire_in: u64,
    pub wire_out: u64,
    pub elapsed: Duration,
}

impl Received {
    /// "sha256:… is here, in ENGINE (via delta; N bytes received, M sent, T s)".
    pub fn detail(&self) -> String {
        format!(
            "{} is here, in {} (via {}; {} bytes received, {} sent, {:.1}s)",
            self.image_id,
            self.here.engine,
            self.path,
            self.wire_in,
            self.wire_out,
            self.elapsed.as_secs_f64()
        )
    }

    /// The line a fetch ends with: "app:2 from prod: received 1.7 MB (2 of
    /// 3 layers were here) in 1.8 s".
    pub fn summary(&self, image: &str, from: &str) -> String {
        let all = self.layers_present + self.layers_received;
        let here = if self.path != "delta" {
            String::new()
        } else if self.layers_received == 0 {
            " (it was here)".to_string()
        } else {
            format!(" ({} of {all} layers were here)", self.layers_present)
        };
        format!(
            "{image} from {from}: received {}{here} in {:.1} s",
            crate::progress::human(self.wire_in as f64),
            self.elapsed.as_secs_f64()
        )
    }
}
