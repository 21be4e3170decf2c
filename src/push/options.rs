//! What a push is asked to do, and what it reports.

use std::sync::Arc;
use std::time::Duration;

use crate::delta::shared::Shared;
use crate::progress::{BoardSlot, Mode};
use crate::setup::Via;
use crate::setup::{Environment, Exposure, Plan};
use crate::tunnel::Tunnel;

#[derive(Clone)]
pub struct PushOptions {
    pub image: String,
    pub command: Vec<String>,
    /// Use the registry already listening on 127.0.0.1:PORT.
    pub registry_port: Option<u16>,
    pub via: Via,
    /// What the environment says (CI variables, DOCKER_HOST).
    pub env: Environment,
    /// The local daemon; None: DOCKER_HOST as the docker CLI reads it.
    pub docker_host: Option<String>,
    /// Expose the registry through this instead of what the environment
    /// asks for (the tests use a [`crate::tunnel::guarded::Guarded`] endpoint).
    pub tunnel: Option<Arc<dyn Tunnel>>,
    /// Give up when nothing arrives from the far side for this long (the far
    /// dos sends heartbeats, so silence means the link is gone).
    pub idle: Duration,
    /// Give up when the far dos has not said hello after this long.
    pub hello: Duration,
    /// How progress is shown on stderr.
    pub display: Mode,
    /// Where the progress display's lines say which host they are about (a fan-out).
    pub label: Option<String>,
    /// A fan-out's layers, compressed once for all its hosts.
    pub shared: Option<Arc<Shared>>,
    /// Where a fan-out's display finds this push's progress.
    pub board_slot: Option<BoardSlot>,
}

/// How long the far side's hello is waited for: ssh connecting and a
/// password typed at its prompt fit; a host that hangs is named in a minute.
pub const DEFAULT_HELLO: Duration = Duration::from_secs(60);

/// The default idle limit: long enough for a congested mobile link, short
/// enough that a dead one is noticed while the user still watches.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30);

impl PushOptions {
    pub fn new(image: impl Into<String>, command: Vec<String>) -> PushOptions {
        PushOptions {
            image: image.into(),
            command,
            registry_port: None,
            via: Via::Auto,
            env: Environment::from_process(),
            docker_host: None,
            tunnel: None,
            idle: DEFAULT_IDLE,
            hello: DEFAULT_HELLO,
            display: Mode::Quiet,
            label: None,
            shared: None,
            board_slot: None,
        }
    }

    /// What this push will do, and why.
    pub fn plan(&self) -> Plan {
        let mut plan = Plan::new(&self.env, self.via, self.registry_port);
        if let Some(t) = &self.tunnel {
            plan.exposure = Exposure::Tunnel(t.name());
        }
        plan
    }
}

/// What a successful push did.
#[derive(Debug)]
pub struct PushReport {
    /// The image's ID on the far engine.
    pub image_id: String,
    /// Its ID here, where the far engine names images another way (the
    /// config digest and the layers are the same on both).
    pub local_id: Option<String>,
    /// The engines at both ends (the far one as it says, when it does).
    pub local_engine: String,
    pub far_engine: Option<String>,
    /// "delta", "registry" or "hub".
    pub path: &'static str,
    /// Bytes written to and read from the transport.
    pub wire_out: u64,
    pub wire_in: u64,
    pub elapsed: Duration,
    /// Delta only: layers sent / already on the far side.
    pub layers_sent: usize,
    pub layers_present: usize,
    /// Delta only: how the layers were read from the local daemon.
    pub source: Option<&'static str>,
    /// The image's size as the local engine reports it.
    pub image_size: u64,
}

impl PushReport {
    /// What the far side holds and how it got there: "sha256:… is on the
    /// far daemon, Docker … (via delta, read by …; N bytes sent, …)".
    pub fn detail(&self) -> String {
        format!(
            "{} is on the far daemon{}{} (via {}{}; {} bytes sent, {} received, {:.1}s)",
            self.image_id,
            self.far_engine
                .as_deref()
                .map(|e| format!(", {e}"))
                .unwrap_or_default(),
            self.local_id
                .as_deref()
                .map(|l| format!(
                    "; {l} here, on {}: the same config and layers",
                    self.local_engine
                ))
                .unwrap_or_default(),
            self.path,
            self.source
                .map(|s| format!(", read by {s}"))
                .unwrap_or_default(),
            self.wire_out,
            self.wire_in,
            self.elapsed.as_secs_f64()
        )
    }

    /// The line a push ends with: "app:2 on prod: sent 1.7 MB of 232.0 MB
    /// (2 of 3 layers were there) in 1.8 s".
    pub fn summary(&self, image: &str, host: &str) -> String {
        format!(
            "{image} on {host}: {} in {:.1} s",
            self.summary_short(),
            self.elapsed.as_secs_f64()
        )
    }

    /// "sent 1.7 MB of 232.0 MB (2 of 3 layers were there)".
    pub fn summary_short(&self) -> String {
        let there = if self.path == "delta" {
            let all = self.layers_sent + self.layers_present;
            if self.layers_sent == 0 && all > 0 {
                " (it was there)".to_string()
            } else {
                format!(" ({} of {all} layers were there)", self.layers_present)
            }
        } else if self.path == "hub" {
            " (into the hub's registry, which kept the blobs it had)".to_string()
        } else {
            " (the far daemon pulled it through the relay)".to_string()
        };
        format!(
            "sent {} of {}{there}",
            crate::progress::human(self.wire_out as f64),
            crate::progress::human(self.image_size as f64),
        )
    }
}
