//! Errors a user acts on, and the exit code each maps to.
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | the image is on the far daemon |
//! | 1    | any other failure |
//! | 2    | bad command line (clap, an invalid image reference), or a setup that can't work (e.g. a detached daemon and no tunnel) |
//! | 3    | local Docker: daemon unreachable, image not found |
//! | 4    | transport: command not found, far side not speaking dos, version mismatch, connection lost |
//! | 5    | the far side refused or failed (e.g. its docker pull) |
//! | 6    | a push to several hosts: some got the image, some failed for different reasons (every host failing for the same one exits with its code) |
//! | 130  | interrupted (Ctrl-C, SIGTERM) |

use thiserror::Error;

use crate::docker::DaemonError;
use crate::protocol::handshake::HandshakeError;

/// Failures involving the transport command or the far dos.
#[derive(Debug, Error)]
pub enum PeerError {
    #[error("cannot start the transport command {program:?}: {cause}")]
    CommandNotFound { program: String, cause: String },
    #[error("the far side did not speak dos: {detail}{}", shown(printed))]
    NotDos { detail: String, printed: String },
    #[error("the far side has no dos: {detail}{}", shown(printed))]
    Missing { detail: String, printed: String },
    #[error("{0}")]
    Handshake(HandshakeError),
    #[error("the far side refused: {0}")]
    Refused(String),
    #[error("the far side failed: {0}")]
    FarFailure(String),
    #[error("the connection to the far side was lost: {detail}{}", shown(printed))]
    ConnectionLost { detail: String, printed: String },
}

/// A command line or setup that can't work: a missing argument, a flag
/// this engine can't honour, a detached daemon and no tunnel.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct SetupError(pub String);

impl PeerError {
    /// The connection was lost; `detail` says how.
    pub fn lost(detail: String) -> PeerError {
        PeerError::ConnectionLost {
            detail,
            printed: String::new(),
        }
    }
}

#[derive(Debug, Error)]
#[error("interrupted")]
pub struct Interrupted;

/// A push to several hosts where some failed: each named, with the exit
/// code its own failure maps to.
#[derive(Debug, Error)]
#[error("{} of {of} hosts failed: {}", failed.len(), failed.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>().join(", "))]
pub struct FanoutError {
    pub of: usize,
    pub failed: Vec<(String, i32)>,
}

fn shown(printed: &str) -> String {
    if printed.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- the far side printed ---\n{}", printed.trim_end())
    }
}

/// The process exit code for an error chain.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if cause.is::<Interrupted>() {
            return 130;
        }
        if let Some(f) = cause.downcast_ref::<FanoutError>() {
            let first = f.failed.first().map_or(1, |(_, c)| *c);
            return if f.failed.iter().all(|(_, c)| *c == first) {
                first
            } else {
                6
            };
        }
        if cause.is::<SetupError>() || cause.is::<crate::reference::InvalidReference>() {
            return 2;
        }
        // A stream's reader sees the daemon's failure inside an io::Error
        // (whose source() skips it).
        let inner = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        if cause.is::<DaemonError>() || inner.is_some_and(|i| i.is::<DaemonError>()) {
            return 3;
        }
        if let Some(p) = cause.downcast_ref::<PeerError>() {
            return match p {
                PeerError::Refused(_) | PeerError::FarFailure(_) => 5,
                _ => 4,
            };
        }
        if cause.is::<HandshakeError>() {
            return 4;
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_daemon_lost_inside_a_stream_is_3() {
        let lost = DaemonError::Unreachable {
            host: "unix:///x.sock".into(),
            cause: "its export of the image broke off".into(),
        };
        let e = anyhow::Error::new(std::io::Error::other(lost)).context("reading the image export");
        assert_eq!(exit_code(&e), 3);
        let other = anyhow::Error::new(std::io::Error::other("disk")).context("writing");
        assert_eq!(exit_code(&other), 1);
    }
}
