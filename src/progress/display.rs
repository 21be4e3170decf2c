//! Drawing the [`Board`]: indicatif's multi-line display on a terminal
//! (one line per layer and a total, redrawn in place), or a plain line per
//! change and every few seconds.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use super::board::{Board, Change};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Redrawn in place (stderr is a terminal).
    Live,
    /// Timestamped lines.
    Plain,
    /// Nothing.
    Quiet,
}

impl Mode {
    /// Live on a terminal, plain lines otherwise.
    pub fn for_stderr() -> Mode {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Mode::Live
        } else {
            Mode::Plain
        }
    }
}

/// The live display while it is up: stderr's other writers print above it.
pub(super) static LIVE: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Write to stderr without garbling a live display.
pub fn write_stderr(bytes: &[u8]) {
    let live = LIVE.lock().unwrap().clone();
    match live {
        Some(mp) => mp.suspend(|| {
            let _ = std::io::stderr().write_all(bytes);
        }),
        None => {
            let _ = std::io::stderr().write_all(bytes);
        }
    }
}

/// stderr for `tracing_subscriber` (its `MakeWriter`), through
/// [`write_stderr`].
#[derive(Clone, Copy, Default)]
pub struct StderrWriter;

impl Write for StderrWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write_stderr(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrWriter {
    type Writer = StderrWriter;
    fn make_writer(&'a self) -> StderrWriter {
        StderrWriter
    }
}

/// The display of one board, drawn until [`Display::finish`].
pub struct Display {
    ticker: Option<JoinHandle<()>>,
    mode: Mode,
    board: Arc<Board>,
    live: Option<Arc<Mutex<Live>>>,
    /// The host plain lines name (a fan-out).
    label: Option<Arc<str>>,
}

struct Live {
    mp: MultiProgress,
    rows: Vec<ProgressBar>,
    total: ProgressBar,
}

impl Live {
    fn new() -> Live {
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let total = mp.add(line());
        Live {
            mp,
            rows: Vec::new(),
            total,
        }
    }

    fn draw(&mut self, board: &Board) {
        let s = board.snapshot();
        while self.rows.len() < s.rows.len() {
            let bar = self.mp.insert_before(&self.total, line());
            self.rows.push(bar);
        }
        for (bar, row) in self.rows.iter().zip(&s.rows) {
            bar.set_message(row.line());
        }
        self.total.set_message(s.total_line());
    }
}

fn line() -> ProgressBar {
    let bar = ProgressBar::no_length();
    bar.set_style(ProgressStyle::with_template("{msg}").expect("a fixed template"));
    bar
}

impl Display {
    /// Draw `board`; plain lines name `label` (a fan-out's host) if given.
    pub fn start(board: Arc<Board>, mode: Mode, label: Option<&str>) -> Display {
        let label: Option<Arc<str>> = label.map(Arc::from);
        let live = (mode == Mode::Live).then(|| {
            let l = Live::new();
            *LIVE.lock().unwrap() = Some(l.mp.clone());
            Arc::new(Mutex::new(l))
        });
        let ticker = (mode != Mode::Quiet).then(|| {
            let (b, live, label) = (board.clone(), live.clone(), label.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(125));
                let mut last_plain = tokio::time::Instant::now();
                loop {
                    tick.tick().await;
                    match &live {
                        Some(l) => l.lock().unwrap().draw(&b),
                        None => {
                            plain_changes(&b, label.as_deref());
                            if last_plain.elapsed() >= PLAIN_EVERY {
                                last_plain = tokio::time::Instant::now();
                                let s = b.snapshot();
                                if s.wire > 0 {
                                    plain(label.as_deref(), &s.total_line());
                                }
                            }
                        }
                    }
                }
            })
        });
        Display {
            ticker,
            mode,
            board,
            live,
            label,
        }
    }

    /// Stop drawing; the last state stays on the terminal.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(l) = self.live.take() {
            let mut l = l.lock().unwrap();
            l.draw(&self.board);
            for bar in l.rows.iter().chain([&l.total]) {
                bar.finish();
            }
            LIVE.lock().unwrap().take();
        }
        if self.mode == Mode::Plain {
            plain_changes(&self.board, self.label.as_deref());
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How often the plain total line comes.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// One timestamped line per change.
fn plain_changes(b: &Board, label: Option<&str>) {
    let changes = b.changes();
    if changes.is_empty() {
        return;
    }
    let s = b.snapshot();
    let (there, engine, rest) = if b.is_receiving() {
        ("here", "the engine here", "receiving")
    } else {
        ("there", "the far engine", "sending")
    };
    for c in changes {
        let text = match c {
            Change::Layers { present, total } => {
                format!("{present} of {total} layers are {there}; {rest} the rest")
            }
            Change::Started { row } => s.rows[row].line_as(super::State::Sending),
            Change::Verified { row } => s.rows[row].line_as(super::State::Verified),
            Change::Loading => format!("every layer is {there}: {engine} loads the image"),
        };
        plain(label, &text);
    }
}

/// A timestamped line: "12:00:01 dos: …", or "12:00:01 dos: HOST: …".
pub fn plain(label: Option<&str>, text: &str) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let label = label.map(|l| format!("{l}: ")).unwrap_or_default();
    write_stderr(format!("{h:02}:{m:02}:{s:02} dos: {label}{text}\n").as_bytes());
}
