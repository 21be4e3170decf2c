//! `dos push IMAGE --to H1 --to H2 …`: the image to several hosts in one
//! command.
//!
//! One session per host, at most `parallel` at once, each negotiating what
//! its far engine lacks exactly as a single push does (and bringing dos to a
//! host without it, [`crate::bootstrap`]). What the hosts share is the local
//! work: a layer several of them lack is read out of the local engine and
//! compressed once ([`crate::delta::shared`]), then sent to each at its
//! link's pace. A host that fails (unreachable, refused, its disk full)
//! fails alone: the others go on, and the command ends non-zero naming it.
//!
//! [`hub`]: the same through a hub, the deploy machine's uplink carrying
//! one copy (`--hub`).

mod hub;

pub use hub::{through_hub, HubReport, ServerOutcome};

use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use tracing::Instrument;

use crate::bootstrap::{self, Target};
use crate::delta::shared::{Shared, SharedStats};
use crate::error::FanoutError;
use crate::progress::{human, BoardSlot, FanDisplay, Mode};
use crate::push::{PushOptions, PushReport};

/// At most this many sessions at once unless `--parallel` says otherwise:
/// past it, the local disk and CPU are shared too thinly for one more link
/// to finish sooner.
pub const DEFAULT_PARALLEL: usize = 8;

/// How one host's push ended.
pub struct HostOutcome {
    pub host: String,
    pub result: Result<PushReport>,
}

/// What a fan-out did.
pub struct FanoutReport {
    pub hosts: Vec<HostOutcome>,
    pub shared: SharedStats,
    pub elapsed: Duration,
}

/// Push `opts.image` to every host of `targets`.
pub async fn push_many(
    opts: PushOptions,
    targets: Vec<Target>,
    parallel: usize,
) -> Result<FanoutReport> {
    let started = Instant::now();
    let shared = Shared::new()?;
    let live = opts.display == Mode::Live;
    let slots: Vec<(String, BoardSlot)> = targets
        .iter()
        .map(|t| (t.host.to_string(), BoardSlot::default()))
        .collect();
    let display = live.then(|| FanDisplay::start(slots.clone()));
    let runs = targets
        .into_iter()
        .zip(slots)
        .enumerate()
        .map(|(i, (t, (host, slot)))| {
            let mut o = opts.clone();
            o.shared = Some(shared.clone());
            o.label = Some(host.clone());
            o.board_slot = Some(slot);
            if live {
                // One line per host, drawn by the fan-out's display.
                o.display = Mode::Quiet;
            }
            let span = tracing::info_span!("to", host = %host);
            let display = display.as_ref().map(FanDisplay::handle);
            async move {
                let result = bootstrap::push_to(o, &t).await;
                if let Some(d) = display {
                    d.ended(
                        i,
                        result
                            .as_ref()
                            .map(|r| r.summary_short())
                            .map_err(|e| format!("{e:#}")),
                    );
                }
                (i, HostOutcome { host, result })
            }
            .instrument(span)
        });
    let mut hosts: Vec<(usize, HostOutcome)> = futures_util::stream::iter(runs)
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    hosts.sort_by_key(|(i, _)| *i);
    if let Some(d) = display {
        d.finish();
    }
    Ok(FanoutReport {
        hosts: hosts.into_iter().map(|(_, h)| h).collect(),
        shared: shared.stats(),
        elapsed: started.elapsed(),
    })
}

impl FanoutReport {
    /// The summary table: a row per host (host, engine, sent, time,
    /// result), then what the hosts shared.
    pub fn table(&self, image: &str) -> String {
        let rows: Vec<[String; 5]> = self
            .hosts
            .iter()
            .map(|h| match &h.result {
                Ok(r) => [
                    h.host.clone(),
                    r.far_engine.clone().unwrap_or_else(|| "?".into()),
                    human(r.wire_out as f64),
                    format!("{:.1} s", r.elapsed.as_secs_f64()),
                    format!("ok: {}", r.summary_short()),
                ],
                Err(e) => [
                    h.host.clone(),
                    String::new(),
                    String::new(),
                    String::new(),
                    format!("FAILED: {}", first_line(&format!("{e:#}"))),
                ],
            })
            .collect();
        let head = ["host", "engine", "sent", "time", "result"].map(String::from);
        let mut out = columns(&head, &rows);
        let ok = self.hosts.iter().filter(|h| h.result.is_ok()).count();
        out.push_str(&format!(
            "{image}: on {ok} of {} hosts in {:.1} s; layers read and compressed once: {} ({}) for {} sends\n",
            self.hosts.len(),
            self.elapsed.as_secs_f64(),
            self.shared.compressed,
            human(self.shared.raw as f64),
            self.shared.sends,
        ));
        out
    }

    /// Ok if every host has the image; else the hosts that failed, named.
    pub fn into_result(self) -> Result<()> {
        let failed: Vec<(String, i32)> = self
            .hosts
            .iter()
            .filter_map(|h| {
                h.result
                    .as_ref()
                    .err()
                    .map(|e| (h.host.clone(), crate::error::exit_code(e)))
            })
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err(FanoutError {
            of: self.hosts.len(),
            failed,
        }
        .into())
    }
}

/// `head` and `rows` in aligned columns, the last one left ragged.
fn columns<const N: usize>(head: &[String; N], rows: &[[String; N]]) -> String {
    let mut width = [0usize; N];
    for r in std::iter::once(head).chain(rows) {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(head).chain(rows) {
        for (w, c) in width[..N - 1].iter().zip(r) {
            out.push_str(&format!("{c:<w$}  ", w = *w));
        }
        out.push_str(&r[N - 1]);
        out.push('\n');
    }
    out
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}
