//! `dos push IMAGE --hub HUB --to S1 --to S2 …`: one copy over the deploy
//! machine's uplink whatever the number of servers. The image goes into the
//! hub ([`crate::hub`]) once; then each server, over ssh, runs its own
//! `dos fetch IMAGE --from HUB` and gets it from the hub over its own link.
//! The servers reach the hub with their own ssh and keys (`--hub-ssh`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;

use crate::bootstrap::{self, Target};
use crate::error::{FanoutError, PeerError, SetupError};
use crate::host::{quote, Host};
use crate::push::{PushOptions, PushReport};

/// How one server's fetch from the hub ended: its own summary line.
pub struct ServerOutcome {
    pub host: String,
    pub result: Result<String>,
    pub elapsed: Duration,
}

pub struct HubReport {
    pub hub: String,
    pub push: PushReport,
    pub servers: Vec<ServerOutcome>,
    pub elapsed: Duration,
}

/// Push `opts.image` into `hub`, then have every server fetch it from
/// there, at most `parallel` at once. `hub_ssh`: the ssh command the
/// servers run to reach the hub (theirs, `ssh`, by default).
pub async fn through_hub(
    opts: PushOptions,
    hub: &Target,
    servers: Vec<Target>,
    hub_ssh: Option<&str>,
    parallel: usize,
) -> Result<HubReport> {
    let started = Instant::now();
    let push = bootstrap::push_to(opts.clone(), hub)
        .await
        .with_context(|| format!("pushing into the hub {}", hub.host))?;
    if push.path != "hub" {
        bail!(SetupError(format!(
            "{} took the image into its engine: it is not a dos hub (its key's forced command is not `dos hub`)",
            hub.host
        )));
    }
    tracing::info!("dos: {}: {}", hub.host, push.summary_short());
    let image = opts.image.clone();
    let runs = servers.into_iter().map(|t| {
        let image = image.clone();
        async move {
            let started = Instant::now();
            let result = fetch_on(&t, &image, &hub.host, hub_ssh).await;
            match &result {
                Ok(line) => tracing::info!("dos: {}: {line}", t.host),
                Err(e) => tracing::warn!("dos: {}: {e:#}", t.host),
            }
            ServerOutcome {
                host: t.host.to_string(),
                result,
                elapsed: started.elapsed(),
            }
        }
    });
    let servers = futures_util::stream::iter(runs)
        .buffered(parallel.max(1))
        .collect()
        .await;
    Ok(HubReport {
        hub: hub.host.to_string(),
        push,
        servers,
        elapsed: started.elapsed(),
    })
}

/// `dos fetch IMAGE --from HUB` run on `server` (dos brought there first
/// if it must, as for a push).
async fn fetch_on(
    server: &Target,
    image: &str,
    hub: &Host,
    hub_ssh: Option<&str>,
) -> Result<String> {
    let mut args = format!(
        "fetch -q {} --from {}",
        quote(image),
        quote(&hub.to_string())
    );
    if let Some(s) = hub_ssh {
        args.push_str(&format!(" --ssh {}", quote(s)));
    }
    bootstrap::run_on(server, &args, run_there).await
}

/// Run the ssh command; its stderr's last line is the fetch's summary.
async fn run_there(argv: Vec<String>) -> Result<String> {
    let out = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", argv[0]))?;
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string();
    if out.status.success() {
        return Ok(last);
    }
    let status = crate::transport::describe(Some(out.status));
    if matches!(out.status.code(), Some(126 | 127)) {
        bail!(PeerError::Missing {
            detail: format!("dos fetch there {status}"),
            printed: err.trim_end().to_string(),
        });
    }
    bail!(PeerError::FarFailure(format!(
        "its dos fetch {status}: {}",
        last.trim_start_matches("dos: error: ")
    )))
}

impl HubReport {
    /// A row for the hub's push, then one per server.
    pub fn table(&self, image: &str) -> String {
        let mut rows = vec![[
            format!("{} (hub)", self.hub),
            crate::progress::human(self.push.wire_out as f64),
            format!("{:.1} s", self.push.elapsed.as_secs_f64()),
            format!("ok: {}", self.push.summary_short()),
        ]];
        for s in &self.servers {
            rows.push([
                s.host.clone(),
                String::new(),
                format!("{:.1} s", s.elapsed.as_secs_f64()),
                match &s.result {
                    Ok(l) => format!("ok: {l}"),
                    Err(e) => format!("FAILED: {}", super::first_line(&format!("{e:#}"))),
                },
            ]);
        }
        let head = ["host", "sent", "time", "result"].map(String::from);
        let mut out = super::columns(&head, &rows);
        let ok = self.servers.iter().filter(|s| s.result.is_ok()).count();
        out.push_str(&format!(
            "{image}: into the hub once, on {ok} of {} servers from there, in {:.1} s\n",
            self.servers.len(),
            self.elapsed.as_secs_f64()
        ));
        out
    }

    /// Ok if every server has the image; else those that failed, named.
    pub fn into_result(self) -> Result<()> {
        let failed: Vec<(String, i32)> = self
            .servers
            .iter()
            .filter_map(|s| {
                s.result
                    .as_ref()
                    .err()
                    .map(|e| (s.host.clone(), crate::error::exit_code(e)))
            })
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err(FanoutError {
            of: self.servers.len(),
            failed,
        }
        .into())
    }
}
