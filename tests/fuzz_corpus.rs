//! Replays the fuzz corpus kept in `fuzz/corpus/` through the same harness
//! the fuzz targets use (`fuzz/harness.rs`), on stable, in every test run:
//! every input found so far, including any that once crashed, must be
//! handled without a panic.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

/// Panics anywhere in the process, counted by a panic hook: a task the
/// harness spawns (a mux stream's reader) panics on its own thread of
/// control and only drops its JoinHandle's result, which `catch_unwind`
/// around the harness never sees.
static PANICS: AtomicUsize = AtomicUsize::new(0);
/// One replay at a time, so that a panic is counted against its own input.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

fn replay(target: &str, run: fn(&[u8])) {
    count_panics();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let before = PANICS.load(Ordering::SeqCst);
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(
            outcome.is_ok() && PANICS.load(Ordering::SeqCst) == before,
            "{target}: {} made the harness (or a task it spawned) panic",
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
