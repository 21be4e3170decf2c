//! Progress on stderr: bytes, rate, elapsed. A live line when stderr is a
//! terminal; plain lines every few seconds otherwise (CI logs stay readable).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// Something that can say how many bytes moved so far.
pub type Counter = Arc<dyn Fn() -> u64 + Send + Sync>;

pub struct Progress {
    label: String,
    start: Instant,
    counter: Counter,
    ticker: Option<JoinHandle<()>>,
    tty: bool,
}

impl Progress {
    pub fn start(label: &str, counter: Counter) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let start = Instant::now();
        let every = if tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(5)
        };
        let (l, c) = (label.to_string(), counter.clone());
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let line = format_line(&l, c(), start.elapsed());
                let mut err = std::io::stderr().lock();
                if tty {
                    let _ = write!(err, "\r\x1b[2K{line}");
                } else {
                    let _ = writeln!(err, "{line}");
                }
            }
        });
        Progress {
            label: label.to_string(),
            start,
            counter,
            ticker: Some(ticker),
            tty,
        }
    }

    /// Stop the ticker and print the final line.
    pub fn finish(mut self, outcome: &str) -> (u64, Duration) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        let (bytes, took) = ((self.counter)(), self.start.elapsed());
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{} — {outcome}", format_line(&self.label, bytes, took));
        (bytes, took)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
    }
}

pub fn format_line(label: &str, bytes: u64, took: Duration) -> String {
    let secs = took.as_secs_f64();
    let rate = if secs > 0.0 { bytes as f64 / secs } else { 0.0 };
    format!(
        "dos: {label}: {} in {secs:.1}s ({}/s)",
        human(bytes as f64),
        human(rate)
    )
}

pub fn human(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
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
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(
            format_line("sent", 2 * 1024 * 1024, Duration::from_secs(2)),
            "dos: sent: 2.0 MiB in 2.0s (1.0 MiB/s)"
        );
    }
}
