//! Replays the fuzz corpus kept in `fuzz/corpus/` through the same harness
//! the fuzz targets use (`fuzz/harness.rs`), on stable, in every test run:
//! every input found so far, including any that once crashed, must be
//! handled without a panic.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(
            outcome.is_ok(),
            "{target}: {} made the harness panic",
            path.display()
        );
        n += 1;
    }
    assert!(n > 0, "the {target} corpus is empty");
    eprintln!("{target}: {n} inputs replayed");
}

#[test]
fn frame_corpus() {
    replay("frame", harness::frame);
}

#[test]
fn handshake_corpus() {
    replay("handshake", harness::handshake);
}

#[test]
fn session_corpus() {
    replay("session", harness::session);
}

#[test]
fn records_corpus() {
    replay("records", harness::records);
}
