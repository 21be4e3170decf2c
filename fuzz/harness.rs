//! What each fuzz target does with its input. Shared by the libFuzzer
//! targets (`fuzz_targets/`) and by `tests/fuzz_corpus.rs`, which replays
//! the kept corpus on stable. Each function must return normally for any
//! input: a panic or an abort is the bug being looked for.

use bytes::{BufMut, BytesMut};
use dos::delta::records::{self, Record};
use dos::mux::{self, Event, Liveness, Side};
use dos::protocol::frame::{Frame, MAX_PAYLOAD};
use dos::protocol::handshake;
use dos::protocol::message::Message;
use tokio::io::AsyncReadExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The frame decoder, fed in pieces whose size the first byte picks: it
/// must yield the same frames however the bytes are cut, and every frame it
/// yields must re-encode to the bytes it came from.
pub fn frame(data: &[u8]) {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let whole = decode_all(data, data.len().max(1));
    let pieces = decode_all(data, step);
    assert_eq!(whole, pieces, "the decoder depends on how the input is cut");
    let mut again = BytesMut::new();
    for f in &whole.0 {
        assert!(f.payload.len() <= MAX_PAYLOAD);
        f.encode(&mut again);
    }
    assert_eq!(&again[..], &data[..again.len()]);
}

type Decoded = (Vec<Frame>, Option<String>);

fn decode_all(data: &[u8], step: usize) -> Decoded {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in data.chunks(step) {
        buf.put_slice(chunk);
        loop {
            match Frame::decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    }
    let end = Frame::check_eof(&buf).err().map(|e| e.to_string());
    (frames, end)
}

/// The handshake reader on arbitrary bytes.
pub fn handshake(data: &[u8]) {
    runtime().block_on(async {
        let mut r = data;
        if let Ok((hello, rest)) = handshake::read(&mut r).await {
            assert!(rest.len() <= data.len());
            // What it accepted must encode again.
            let _ = handshake::encode(&hello);
        }
    });
}

/// A whole session as the far side would see it: a handshake, then frames
/// routed by the multiplexer, control messages parsed, opened streams
/// drained. The session must end (the input does) without a panic.
pub fn session(data: &[u8]) {
    runtime().block_on(async {
        let mut input = std::io::Cursor::new(data.to_vec());
        let Ok((_, leftover)) = handshake::read(&mut input).await else {
            return;
        };
        let mut session = mux::start(
            input,
            leftover,
            tokio::io::sink(),
            Side::Dialer,
            Liveness::OFF,
        );
        let mux = session.mux.clone();
        // Every task this session spawns is awaited, and a panic in one is
        // raised here: a runtime dropped with its tasks unfinished would
        // hide it.
        let mut tasks = Vec::new();
        while let Some(ev) = session.next().await {
            match ev {
                Event::Control(b) => {
                    let _ = Message::from_bytes(&b);
                }
                Event::Open(s) => {
                    let (near, mut far) = tokio::io::duplex(64 * 1024);
                    tasks.push(mux.attach(s, near));
                    tasks.push(tokio::spawn(async move {
                        let mut sink = Vec::new();
                        let _ = far.read_to_end(&mut sink).await;
                    }));
                }
            }
        }
        drop(mux);
        drop(session);
        for t in tasks {
            if let Err(e) = t.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    });
}

/// The records inside a delta stream, bodies skipped as the receiver
/// would read them.
pub fn records(data: &[u8]) {
    runtime().block_on(async {
        let mut r = data;
        loop {
            let skip = match records::read_header(&mut r).await {
                Ok(Record::Config { len }) => len,
                Ok(Record::Layer { len, .. }) => len,
                Ok(Record::Resume { len, offset, .. }) | Ok(Record::Blob { len, offset, .. }) => {
                    assert!(offset <= len);
                    len - offset
                }
                Ok(Record::Sizes { count }) => match records::read_sizes(&mut r, count).await {
                    Ok(sizes) => {
                        assert!(sizes.len() <= records::MAX_SIZES as usize);
                        continue;
                    }
                    Err(_) => return,
                },
                Ok(Record::End) | Err(_) => return,
            };
            let n = usize::try_from(skip).unwrap_or(usize::MAX).min(r.len());
            if n < skip as usize {
                return;
            }
            r = &r[n..];
        }
    });
}
