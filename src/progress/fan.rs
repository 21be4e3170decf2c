//! A fan-out's live display: one line per host, redrawn in place, each
//! drawn from that host's [`Board`] ("connecting" until its session
//! starts, its result once it ends).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use super::display::LIVE;
use super::Board;

/// Where a push puts its board once its session starts.
pub type BoardSlot = Arc<Mutex<Option<Arc<Board>>>>;

type Ended = Arc<Mutex<Vec<Option<Result<String, String>>>>>;

pub struct FanDisplay {
    ticker: JoinHandle<()>,
    state: Arc<State>,
}

struct State {
    hosts: Vec<(String, BoardSlot)>,
    ended: Ended,
    lines: Vec<ProgressBar>,
    width: usize,
}

/// Tells the display a host ended.
pub struct FanHandle(Ended);

impl FanHandle {
    /// Host `i` ended: a short summary, or its error.
    pub fn ended(&self, i: usize, how: Result<String, String>) {
        if let Some(e) = self.0.lock().unwrap().get_mut(i) {
            *e = Some(how);
        }
    }
}

impl FanDisplay {
    pub fn start(hosts: Vec<(String, BoardSlot)>) -> FanDisplay {
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let lines = hosts
            .iter()
            .map(|_| {
                let bar = mp.add(ProgressBar::no_length());
                bar.set_style(ProgressStyle::with_template("{msg}").expect("a fixed template"));
                bar
            })
            .collect();
        *LIVE.lock().unwrap() = Some(mp.clone());
        let width = hosts
            .iter()
            .map(|(h, _)| h.chars().count())
            .max()
            .unwrap_or(0);
        let state = Arc::new(State {
            ended: Arc::new(Mutex::new(vec![None; hosts.len()])),
            hosts,
            lines,
            width,
        });
        let s = state.clone();
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(125));
            loop {
                tick.tick().await;
                s.draw();
            }
        });
        FanDisplay { ticker, state }
    }

    pub fn handle(&self) -> FanHandle {
        FanHandle(self.state.ended.clone())
    }

    /// Stop drawing; the last state stays on the terminal.
    pub fn finish(self) {
        self.ticker.abort();
        self.state.draw();
        for l in &self.state.lines {
            l.finish();
        }
        LIVE.lock().unwrap().take();
    }
}

impl State {
    fn draw(&self) {
        let ended = self.ended.lock().unwrap().clone();
        for (i, ((host, slot), line)) in self.hosts.iter().zip(&self.lines).enumerate() {
            let what = match &ended[i] {
                Some(Ok(s)) => format!("done     {s}"),
                Some(Err(e)) => format!("FAILED   {}", e.lines().next().unwrap_or("")),
                None => match slot.lock().unwrap().as_ref() {
                    Some(b) => b
                        .snapshot()
                        .total_line()
                        .replacen("total    ", "sending  ", 1),
                    None => "connecting".into(),
                },
            };
            line.set_message(format!("{host:<w$}  {what}", w = self.width));
        }
    }
}
