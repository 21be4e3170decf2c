//! Control messages: JSON in `Control` frames on stream 0.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// The puller's final word: the image is in place (with its ID), or why not.
    Outcome {
        ok: bool,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image_id: Option<String>,
    },
}

impl Message {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Message always serializes")
    }

    pub fn from_bytes(b: &[u8]) -> Result<Message, serde_json::Error> {
        serde_json::from_slice(b)
    }
}
