//! The handshake each side sends before any frame.
//!
//! ```text
//! MAGIC (8 bytes) | version u16 BE | length u32 BE | JSON `Hello` (length bytes)
//! ```
//!
//! The far side's stdout is often not clean: a login banner, a MOTD, or a shell
//! saying `dos: command not found`. So the reader skips anything before the
//! magic marker (keeping a bounded copy to show the user if no marker comes),
//! and the version sits in a fixed place right after it, so two releases whose
//! `Hello` differs can still tell each other which versions they speak.

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Chosen so it can't appear in text: a high byte first, CR LF and ^Z inside.
pub const MAGIC: [u8; 8] = *b"\x89DOS\r\n\x1a\n";

/// The protocol version this build speaks. Bump on any incompatible change.
/// 2: a far side that has the image asks the pusher to prove it holds it.
pub const VERSION: u16 = 2;

/// Bound on the JSON part of a hello.
pub const MAX_HELLO: usize = 64 * 1024;

/// How much pre-marker output (banners, error messages) we keep and skip.
pub const MAX_NOISE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Push,
    Pull,
}

/// What each side says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub role: Role,
    /// Push: the image offered. Pull: the image asked for.
    pub image: String,
    /// The dos release, for messages only (compatibility is `VERSION`).
    pub release: String,
    /// Optional abilities this side offers, e.g. [`FEATURE_DELTA`].
    #[serde(default)]
    pub features: Vec<String>,
    /// Push, delta possible: the plan, sent ahead so that a far side able
    /// to follow it answers with its inventory at once (one round trip
    /// fewer). It says so with [`FEATURE_EARLY_PLAN`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaPlan>,
}

/// The image a delta would carry: its ID and layers, bottom first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaPlan {
    pub image_id: String,
    pub diff_ids: Vec<String>,
    /// The source's manifest, byte for byte, where its engine names images
    /// by their manifest (see [`crate::protocol::message::Message::Delta`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The image's config, where the pusher has it at hand and it is
    /// small: a far side that holds the image takes it as the pusher's
    /// proof ([`crate::delta::proof`]) without asking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// The side can send (push) or receive and load (pull) a layer delta.
pub const FEATURE_DELTA: &str = "delta";

/// The far side took the plan in the pusher's hello: no `Delta` message follows.
pub const FEATURE_EARLY_PLAN: &str = "early-plan";

/// The sending side was started by the receiver (`dos send`): it tells
/// its failures in an [`crate::protocol::message::Message::Outcome`] of
/// its own, which the receiver waits a moment for when a stream breaks.
pub const FEATURE_TELLS: &str = "tells";

/// The far side is a hub ([`crate::hub`]): a push goes into the registry
/// on its loopback, by the pushing engine's own push through the session.
pub const FEATURE_HUB: &str = "hub";

/// The side understands heartbeat (`Ping`) frames and sends them.
pub const FEATURE_HEARTBEAT: &str = "heartbeat";

/// The pusher shows progress: the far side says when each layer it
/// received checked out ([`crate::protocol::message::Message::Verified`]).
pub const FEATURE_PROGRESS: &str = "progress";

/// The receiver reads the delta stream as concatenated zstd frames: a
/// fan-out splices in layers compressed once for every host
/// ([`crate::delta::shared`]).
pub const FEATURE_FRAMES: &str = "frames";

impl Hello {
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error("the other side does not speak dos (no handshake before it closed the stream)")]
    NotDos { printed: String },
    #[error("the other side printed more than {MAX_NOISE} bytes without a dos handshake")]
    TooMuchNoise { printed: String },
    #[error("protocol version mismatch: this dos speaks version {ours}, the other side speaks version {theirs} (dos {release})")]
    VersionMismatch {
        ours: u16,
        theirs: u16,
        release: String,
    },
    #[error("no dos handshake came within {}s", waited.as_secs())]
    Silent {
        waited: std::time::Duration,
        printed: String,
    },
    #[error("malformed handshake: {0}")]
    Malformed(String),
    #[error("reading the handshake: {0}")]
    Io(#[from] std::io::Error),
}

impl HandshakeError {
    /// What the far side printed before (or instead of) the handshake.
    pub fn printed(&self) -> Option<&str> {
        match self {
            HandshakeError::NotDos { printed }
            | HandshakeError::TooMuchNoise { printed }
            | HandshakeError::Silent { printed, .. } => Some(printed),
            _ => None,
        }
    }
}

/// Encode a hello for the wire.
pub fn encode(hello: &Hello) -> Vec<u8> {
    let json = serde_json::to_vec(hello).expect("a Hello always serializes");
    let mut out = Vec::with_capacity(MAGIC.len() + 6 + json.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// Read the peer's hello, skipping noise before the marker.
///
/// Returns the hello and whatever bytes were read past it (the start of the
/// frame stream), which the caller must feed to the frame decoder first.
pub async fn read<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<(Hello, BytesMut), HandshakeError> {
    read_noting(reader, &mut Vec::new()).await
}

/// [`read`], giving up after `wait`: a host that hangs, a prompt nobody
/// answers or a command that never exits would otherwise be waited on
/// forever. The error keeps what the other side printed meanwhile.
pub async fn read_within<R: AsyncRead + Unpin>(
    reader: &mut R,
    wait: std::time::Duration,
) -> Result<(Hello, BytesMut), HandshakeError> {
    let mut noise = Vec::new();
    match tokio::time::timeout(wait, read_noting(reader, &mut noise)).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::Silent {
            waited: wait,
            printed: printable(&noise),
        }),
    }
}

/// [`read`], with the output skipped before the marker kept in `noise`.
async fn read_noting<R: AsyncRead + Unpin>(
    reader: &mut R,
    noise: &mut Vec<u8>,
) -> Result<(Hello, BytesMut), HandshakeError> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // Phase 1: find the marker.
    loop {
        if let Some(pos) = find(&buf, &MAGIC) {
            noise.extend_from_slice(&buf[..pos]);
            buf.advance(pos + MAGIC.len());
            break;
        }
        // Keep the tail that could be the start of a split marker.
        let keep = buf.len().min(MAGIC.len() - 1);
        let drop = buf.len() - keep;
        noise.extend_from_slice(&buf[..drop]);
        buf.advance(drop);
        if noise.len() > MAX_NOISE {
            return Err(HandshakeError::TooMuchNoise {
                printed: printable(noise),
            });
        }
        if reader.read_buf(&mut buf).await? == 0 {
            noise.extend_from_slice(&buf);
            return Err(HandshakeError::NotDos {
                printed: printable(noise),
            });
        }
    }
    if !noise.is_empty() {
        tracing::debug!(bytes = noise.len(), text = %printable(noise), "skipped output before the dos handshake");
    }
    // Phase 2: version and length, then the JSON.
    fill(reader, &mut buf, 6).await?;
    let theirs = u16::from_be_bytes([buf[0], buf[1]]);
    let len = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
    buf.advance(6);
    if len > MAX_HELLO {
        if theirs != VERSION {
            return Err(HandshakeError::VersionMismatch {
                ours: VERSION,
                theirs,
                release: "unknown".into(),
            });
        }
        return Err(HandshakeError::Malformed(format!(
            "hello of {len} bytes exceeds {MAX_HELLO}"
        )));
    }
    fill(reader, &mut buf, len).await?;
    let body = buf.split_to(len);
    if theirs != VERSION {
        // Best effort at naming their release; the version alone decides.
        let release = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("release")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        return Err(HandshakeError::VersionMismatch {
            ours: VERSION,
            theirs,
            release,
        });
    }
    let hello: Hello = serde_json::from_slice(&body)
        .map_err(|e| HandshakeError::Malformed(format!("invalid hello: {e}")))?;
    Ok((hello, buf))
}

async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    want: usize,
) -> Result<(), HandshakeError> {
    while buf.len() < want {
        if reader.read_buf(buf).await? == 0 {
            return Err(HandshakeError::Malformed(
                "the stream ended inside the handshake".into(),
            ));
        }
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Peer output shown to a user: lossy UTF-8, trimmed.
pub fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            role: Role::Pull,
            image: "app:1".into(),
            release: "0.1.0".into(),
            features: vec![],
            delta: None,
        }
    }

    #[tokio::test]
    async fn skips_banner_and_keeps_trailing_bytes() {
        let mut wire = b"Welcome to prod!\nLast login: never\n".to_vec();
        wire.extend(encode(&hello()));
        wire.extend_from_slice(b"FRAMES");
        // Deliver in odd-sized pieces so the marker is split across reads.
        let mut reader = tokio_test_reader(&wire, 3);
        let (got, rest) = read(&mut reader).await.unwrap();
        assert_eq!(got, hello());
        let mut rest = rest.to_vec();
        reader.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"FRAMES");
    }

    #[tokio::test]
    async fn not_dos_shows_what_was_printed() {
        let mut r = &b"bash: dos: command not found\n"[..];
        let err = read(&mut r).await.unwrap_err();
        assert!(matches!(err, HandshakeError::NotDos { .. }));
        assert_eq!(err.printed(), Some("bash: dos: command not found"));
    }

    #[tokio::test]
    async fn version_mismatch_names_both() {
        let mut wire = encode(&hello());
        wire[8..10].copy_from_slice(&99u16.to_be_bytes());
        let err = read(&mut &wire[..]).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("version {VERSION}")) && msg.contains("version 99"),
            "{msg}"
        );
        assert!(msg.contains("0.1.0"), "{msg}");
    }

    #[tokio::test]
    async fn oversize_and_truncated_and_garbage_are_errors() {
        let mut big = MAGIC.to_vec();
        big.extend_from_slice(&VERSION.to_be_bytes());
        big.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            read(&mut &big[..]).await,
            Err(HandshakeError::Malformed(_))
        ));
        let whole = encode(&hello());
        for cut in MAGIC.len()..whole.len() {
            assert!(matches!(
                read(&mut &whole[..cut]).await,
                Err(HandshakeError::Malformed(_))
            ));
        }
        let mut junk = MAGIC.to_vec();
        junk.extend_from_slice(&VERSION.to_be_bytes());
        junk.extend_from_slice(&3u32.to_be_bytes());
        junk.extend_from_slice(b"{x}");
        assert!(matches!(
            read(&mut &junk[..]).await,
            Err(HandshakeError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn endless_noise_is_bounded() {
        let noise = vec![b'x'; MAX_NOISE * 2];
        assert!(matches!(
            read(&mut &noise[..]).await,
            Err(HandshakeError::TooMuchNoise { .. })
        ));
    }

    /// A reader that hands out at most `step` bytes per read.
    fn tokio_test_reader(data: &[u8], step: usize) -> impl AsyncRead + Unpin {
        let chunks: Vec<std::io::Result<bytes::Bytes>> = data
            .chunks(step)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        tokio_util::io::StreamReader::new(futures_util::stream::iter(chunks))
    }
}
