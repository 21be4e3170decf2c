//! The dos wire protocol: a handshake, then frames carrying many streams.
//!
//! Layering, bottom up: [`frame`] (bytes ↔ frames), [`handshake`] (who is
//! talking, which version), [`message`] (control messages on stream 0), and
//! `crate::mux` (streams with flow control on top of frames).

pub mod frame;
pub mod handshake;
pub mod message;
