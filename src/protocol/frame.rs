//! The frame: the unit that crosses the byte stream after the handshake.
//!
//! ```text
//! +------+-----------+-----------+-----------------+
//! | kind | stream id | length    | payload         |
//! | u8   | u32 BE    | u32 BE    | `length` bytes  |
//! +------+-----------+-----------+-----------------+
//! ```
//!
//! The decoder never trusts the peer: an unknown kind, a length above
//! [`MAX_PAYLOAD`] or a stream that ends inside a frame is an error, never a
//! panic, and the payload is only allocated once its length is known to be sane.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Header size: kind (1) + stream id (4) + length (4).
pub const HEADER_LEN: usize = 9;

/// The largest payload a peer may send. Data frames are cut well below this;
/// the bound exists so a corrupt or hostile length can't make us allocate.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// What a frame means. Stream 0 is the session itself (control messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The sender opened a new stream with this id.
    Open = 1,
    /// Bytes for a stream; counts against the receiver's window.
    Data = 2,
    /// The sender will send no more data on this stream (half close).
    Close = 3,
    /// The stream is aborted in both directions; payload: a reason (UTF-8).
    Reset = 4,
    /// The receiver consumed bytes; payload: u32 BE credit returned to the sender.
    Window = 5,
    /// A JSON control message on stream 0 (see `protocol::message`).
    Control = 6,
    /// A heartbeat on stream 0, sent every few seconds to a peer that
    /// announced `heartbeat`: proof the link is alive while no data flows.
    Ping = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Open,
            2 => Kind::Data,
            3 => Kind::Close,
            4 => Kind::Reset,
            5 => Kind::Window,
            6 => Kind::Control,
            7 => Kind::Ping,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub stream: u32,
    pub payload: Bytes,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unknown frame type {0:#04x}")]
    UnknownKind(u8),
    #[error("frame of {0} bytes is larger than the limit of {MAX_PAYLOAD}")]
    Oversize(usize),
    #[error("the stream ended inside a frame ({0} bytes of it received)")]
    Truncated(usize),
}

impl Frame {
    pub fn new(kind: Kind, stream: u32, payload: impl Into<Bytes>) -> Frame {
        Frame {
            kind,
            stream,
            payload: payload.into(),
        }
    }

    /// Bytes this frame occupies on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Append the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        debug_assert!(self.payload.len() <= MAX_PAYLOAD);
        dst.reserve(self.wire_len());
        dst.put_u8(self.kind as u8);
        dst.put_u32(self.stream);
        dst.put_u32(self.payload.len() as u32);
        dst.put_slice(&self.payload);
    }

    /// Take one whole frame off the front of `src`, if it holds one.
    ///
    /// `Ok(None)` means "need more bytes". The header is validated before the
    /// payload arrives, so a bad length is reported at once.
    pub fn decode(src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = Kind::from_u8(src[0]).ok_or(FrameError::UnknownKind(src[0]))?;
        let len = u32::from_be_bytes([src[5], src[6], src[7], src[8]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::Oversize(len));
        }
        if src.len() < HEADER_LEN + len {
            // Reserve only what this (bounded) frame needs.
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(None);
        }
        let stream = u32::from_be_bytes([src[1], src[2], src[3], src[4]]);
        src.advance(HEADER_LEN);
        let payload = src.split_to(len).freeze();
        Ok(Some(Frame {
            kind,
            stream,
            payload,
        }))
    }

    /// Called when the byte stream ended: leftover bytes mean a cut frame.
    pub fn check_eof(src: &BytesMut) -> Result<(), FrameError> {
        if src.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated(src.len()))
        }
    }

    /// Decode a Window frame's credit.
    pub fn credit(&self) -> Option<u32> {
        let b: [u8; 4] = self.payload.as_ref().try_into().ok()?;
        Some(u32::from_be_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) {
        let mut buf = BytesMut::new();
        f.encode(&mut buf);
        assert_eq!(buf.len(), f.wire_len());
        let got = Frame::decode(&mut buf).unwrap().unwrap();
        assert_eq!(got, f);
        assert!(buf.is_empty());
    }

    #[test]
    fn roundtrips_every_kind() {
        for kind in [
            Kind::Open,
            Kind::Data,
            Kind::Close,
            Kind::Reset,
            Kind::Window,
            Kind::Control,
        ] {
            roundtrip(Frame::new(kind, 7, &b"payload"[..]));
            roundtrip(Frame::new(kind, u32::MAX, Bytes::new()));
        }
        roundtrip(Frame::new(Kind::Data, 1, vec![0xab; MAX_PAYLOAD]));
    }

    #[test]
    fn truncated_input_waits_then_fails_at_eof() {
        let mut whole = BytesMut::new();
        Frame::new(Kind::Data, 3, &b"hello world"[..]).encode(&mut whole);
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(Frame::decode(&mut part).unwrap(), None, "cut at {cut}");
            if cut > 0 {
                assert_eq!(Frame::check_eof(&part), Err(FrameError::Truncated(cut)));
            }
        }
    }

    #[test]
    fn byte_at_a_time_decodes_the_same() {
        let mut whole = BytesMut::new();
        let frames: Vec<Frame> = (0..5)
            .map(|i| Frame::new(Kind::Data, i, vec![i as u8; i as usize * 3]))
            .collect();
        for f in &frames {
            f.encode(&mut whole);
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in whole.iter() {
            buf.put_u8(*b);
            while let Some(f) = Frame::decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn oversize_length_is_refused_before_allocating() {
        let mut buf = BytesMut::new();
        buf.put_u8(Kind::Data as u8);
        buf.put_u32(1);
        buf.put_u32(u32::MAX);
        let cap_before = buf.capacity();
        assert_eq!(
            Frame::decode(&mut buf),
            Err(FrameError::Oversize(u32::MAX as usize))
        );
        assert_eq!(buf.capacity(), cap_before);
    }

    #[test]
    fn unknown_kind_is_refused() {
        let mut buf = BytesMut::from(&[0x7f, 0, 0, 0, 1, 0, 0, 0, 0][..]);
        assert_eq!(Frame::decode(&mut buf), Err(FrameError::UnknownKind(0x7f)));
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic generator: whatever it makes, decode must
        // return frames, "need more" or an error, never panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut buf = BytesMut::new();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.put_u8(x as u8);
            }
            while let Ok(Some(_)) = Frame::decode(&mut buf) {}
        }
    }

    #[test]
    fn window_credit_parses_only_four_bytes() {
        assert_eq!(
            Frame::new(Kind::Window, 1, 513u32.to_be_bytes().to_vec()).credit(),
            Some(513)
        );
        assert_eq!(Frame::new(Kind::Window, 1, vec![1, 2]).credit(), None);
    }
}
