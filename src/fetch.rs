//! `dos fetch IMAGE --from HOST` (or `dos fetch IMAGE CMD…`): the other
//! direction. CMD starts `dos send IMAGE` on the far side; this side
//! receives over CMD's stdin/stdout exactly as a `dos pull` receives from a
//! push: only the layers the local engine lacks, each verified against its
//! diffID, resumable from the spool, into whichever engine is here.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::bootstrap::{self, Target};
use crate::progress::Mode;
use crate::pull::{self, PullOptions, Received};
use crate::reference::ImageRef;
use crate::transport::{explain, Transport};

#[derive(Clone)]
pub struct FetchOptions {
    pub image: String,
    /// The command that starts `dos send IMAGE` on the far side.
    pub command: Vec<String>,
    pub idle: Duration,
    pub hello: Duration,
    /// The local engine; None: DOCKER_HOST as the docker CLI reads it.
    pub docker_host: Option<String>,
    pub display: Mode,
}

impl FetchOptions {
    pub fn new(image: impl Into<String>, command: Vec<String>) -> FetchOptions {
        FetchOptions {
            image: image.into(),
            command,
            idle: crate::push::DEFAULT_IDLE,
            hello: crate::push::DEFAULT_HELLO,
            docker_host: None,
            display: Mode::Quiet,
        }
    }
}

/// Fetch as `opts` says. Ctrl-C, SIGTERM and SIGHUP end it wherever it is
/// (the command is killed with it).
pub async fn fetch(opts: FetchOptions) -> Result<Received> {
    crate::signal::run_interruptible(run(opts)).await
}

/// Fetch from `from`, bringing dos there if it must (as a push does).
pub async fn fetch_from(opts: FetchOptions, from: &Target) -> Result<Received> {
    let args = format!("send {}", crate::host::quote(&opts.image));
    bootstrap::run_on(from, &args, |command| {
        fetch(FetchOptions {
            command,
            ..opts.clone()
        })
    })
    .await
}

async fn run(opts: FetchOptions) -> Result<Received> {
    let r = ImageRef::parse(&opts.image)?;
    r.require_taggable(&opts.image)?;
    if opts.command.is_empty() {
        bail!("no transport command given (e.g. dos fetch app:1 ssh host dos send app:1)");
    }
    let mut transport = Transport::spawn(&opts.command)?;
    let (Some(output), Some(input)) = (transport.stdin.take(), transport.stdout.take()) else {
        bail!("the transport command's stdin and stdout are not pipes");
    };
    let mut p = PullOptions::new(opts.image.clone());
    p.idle = opts.idle;
    p.hello = opts.hello;
    p.docker_host = opts.docker_host.clone();
    p.display = opts.display;
    let result = pull::receive(input, output, p).await;
    let wait = Duration::from_secs(if result.is_ok() { 5 } else { 2 });
    let (status, stderr) = transport.finish(wait).await;
    result.map_err(|e| explain(e, status, &stderr, &opts.command))
}
