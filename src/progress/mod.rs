//! Progress on stderr, for the person who runs a push: a live display with
//! a line per layer where stderr is a terminal ([`display`]), plain
//! timestamped lines where it is not (CI logs stay readable), nothing but
//! the final line with `--quiet`. What it shows is kept on a [`Board`].
//!
//! While the live display is up, everything else written to stderr (ssh's
//! own messages, logs) goes through [`write_stderr`], which prints it above
//! the display instead of through it.

mod board;
mod display;
mod fan;

use std::sync::Arc;

pub use board::{Board, Change, Row, Snapshot, State};
pub use display::{plain, write_stderr, Display, Mode, StderrWriter};
pub use fan::{BoardSlot, FanDisplay, FanHandle};

/// Something that can say how many bytes moved so far.
pub type Counter = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Decimal units, as link rates and disk sizes are quoted: "1.7 MB".
pub fn human(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human(512.0), "512 B");
        assert_eq!(human(1536.0), "1.5 kB");
        assert_eq!(human(232_000_000.0), "232.0 MB");
    }
}
