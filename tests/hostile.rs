//! A hostile peer floods what it can; the real dos binary's peak RSS
//! (GNU time's %M) stays under 64 MiB and it ends the session. Each flood
//! is past what the bounds in `src/mux/mod.rs` allow: streams opened and
//! never taken, each filled to its window; control messages nobody reads;
//! a stream id of the wrong parity; a stderr line without an end.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use dos::mux::WINDOW;
use dos::protocol::frame::{Frame, Kind};
use dos::protocol::handshake::{self, DeltaPlan, Hello, Role};

const LIMIT_KIB: u64 = 64 * 1024;

/// A pusher's hello offering `image`, its plan naming an image nobody has.
fn pusher_hello(image: &str) -> Vec<u8> {
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    handshake::encode(&Hello {
        role: Role::Push,
        image: image.into(),
        release: "hostile".into(),
        features: vec!["delta".into(), "heartbeat".into()],
        delta: Some(DeltaPlan {
            image_id: d('a'),
            diff_ids: vec![d('b')],
            manifest: None,
            config: None,
        }),
    })
}

fn frame(kind: Kind, stream: u32, payload: Vec<u8>) -> Vec<u8> {
    let mut b = BytesMut::new();
    Frame::new(kind, stream, payload).encode(&mut b);
    b.to_vec()
}

/// Run `dos ARGS` under GNU time, feed it `input` (until it stops
/// reading), and return its exit code, stderr and peak RSS in KiB.
fn run_measured(host: &str, args: &[&str], input: Vec<u8>) -> (Option<i32>, String, u64) {
    let dir = tempfile::tempdir().unwrap();
    let rss = dir.path().join("rss");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f").arg("%M").arg("-o").arg(&rss);
    let inner = dos_command(host, args);
    cmd.arg(inner.get_program()).args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd
        .env("DOS_IDLE_TIMEOUT", "5")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/time (GNU time) and dos");
    let mut stdin = child.stdin.take().unwrap();
    // Writes block once dos stops reading; they fail once it has exited.
    let feeder = std::thread::spawn(move || {
        for chunk in input.chunks(64 * 1024) {
            if stdin.write_all(chunk).is_err() {
                return;
            }
        }
        // Then stay silent, the pipe open, until dos gives up.
        std::thread::sleep(Duration::from_secs(60));
    });
    let out = child.wait_with_output().unwrap();
    drop(feeder);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        peak(&rss),
    )
}

fn peak(rss: &Path) -> u64 {
    let s = std::fs::read_to_string(rss).unwrap();
    s.lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("GNU time wrote {s:?}"))
}

/// Streams the pusher opens (even ids), never taken by the far side, each
/// filled to its window: 60 MiB the far side may not hold.
#[test]
fn streams_nobody_reads_are_bounded() {
    let e = need_env!();
    let image = format!("{}:1", unique("hostile-streams"));
    let mut input = pusher_hello(&image);
    // Stream 2 becomes the delta stream the far side waits on (nothing on
    // it); fifteen more wait to be taken (as many as may), and fill up.
    for id in (2..=32).step_by(2) {
        input.extend(frame(Kind::Open, id, Vec::new()));
    }
    for id in (4..=32).step_by(2) {
        for _ in 0..(WINDOW as usize / (1 << 20)) {
            input.extend(frame(Kind::Data, id, vec![0x5a; 1 << 20]));
        }
    }
    let (code, err, kib) = run_measured(&e.peer, &["pull", &image], input);
    eprintln!("far side: peak RSS {kib} KiB; {err}");
    assert_ne!(code, Some(0), "{err}");
    assert!(kib < LIMIT_KIB, "peak RSS {kib} KiB: {err}");
}

/// Control messages sent while the far side waits for layers: nobody reads
/// them until the transfer ends. 100 MiB of them.
#[test]
fn control_messages_nobody_reads_are_bounded() {
    let e = need_env!();
    let image = format!("{}:1", unique("hostile-control"));
    let mut input = pusher_hello(&image);
    input.extend(frame(Kind::Open, 2, Vec::new()));
    for _ in 0..400 {
        input.extend(frame(Kind::Control, 0, vec![b' '; 250 * 1024]));
    }
    let (code, err, kib) = run_measured(&e.peer, &["pull", &image], input);
    eprintln!("far side: peak RSS {kib} KiB; {err}");
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("not yet taken"), "{err}");
    assert!(kib < LIMIT_KIB, "peak RSS {kib} KiB: {err}");
}

/// A stream id of the far side's own parity, opened by the pusher.
#[test]
fn a_stream_id_of_the_wrong_parity_ends_the_session() {
    let e = need_env!();
    let image = format!("{}:1", unique("hostile-parity"));
    let mut input = pusher_hello(&image);
    input.extend(frame(Kind::Open, 3, Vec::new()));
    let (code, err, _) = run_measured(&e.peer, &["pull", &image], input);
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("opened with an id this side allocates"),
        "{err}"
    );
}

/// A far side whose stderr is one 200 MB line: the pusher passes it on in
/// pieces, and gives up on the missing handshake.
#[test]
fn an_endless_stderr_line_is_bounded() {
    let e = need_env!();
    let image = format!("{}:1", unique("hostile-stderr"));
    build_image(&e.local, &image, fresh_seed(), 1024, "x\n");
    let dir = tempfile::tempdir().unwrap();
    let rss = dir.path().join("rss");
    let inner = dos_command(
        &e.local,
        &[
            "push",
            &image,
            "sh",
            "-c",
            "head -c 200000000 /dev/zero | tr '\\0' x >&2; exec sleep 100",
        ],
    );
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f").arg("%M").arg("-o").arg(&rss);
    cmd.arg(inner.get_program()).args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let status = cmd
        .env("DOS_HELLO_TIMEOUT", "5")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let kib = peak(&rss);
    eprintln!("pusher: peak RSS {kib} KiB");
    assert_eq!(status.code(), Some(4));
    assert!(kib < LIMIT_KIB, "peak RSS {kib} KiB");
}
