//! `dos send IMAGE`: the far end of a `dos fetch`. The fetcher's command
//! (ssh …) started it; it speaks dos on stdin/stdout and sends what the
//! fetcher's engine lacks, exactly as a push would.
//!
//! Locked down as an ssh forced command it is read-only: with
//! `command="dos send --allow 'app:*'",restrict` a key may take the
//! images the patterns allow and nothing else, and may never push (only
//! `dos send IMAGE` is accepted in SSH_ORIGINAL_COMMAND).

use std::time::Duration;

use anyhow::Result;

use crate::allow::{image_from_original_command, AllowList, Verb};
use crate::error::SetupError;
use crate::progress::Mode;
use crate::push::{self, PushOptions, PushReport, Via};

pub struct SendOptions {
    /// The image to send. None: the one SSH_ORIGINAL_COMMAND names (an
    /// ssh forced command).
    pub image: Option<String>,
    /// Only these images may be taken.
    pub allow: AllowList,
    /// SSH_ORIGINAL_COMMAND, when sshd ran us as a forced command.
    pub original_command: Option<String>,
    pub idle: Duration,
    pub hello: Duration,
    /// The engine; None: DOCKER_HOST as the docker CLI reads it.
    pub docker_host: Option<String>,
}

/// Send as `opts` says over stdin/stdout.
pub async fn send(opts: SendOptions) -> Result<PushReport> {
    let image = match (&opts.image, &opts.original_command) {
        (Some(i), _) => i.clone(),
        (None, Some(cmd)) => match image_from_original_command(cmd, Verb::Send) {
            Ok(i) => i,
            Err(e) => {
                // Named back as the fetcher asked, if it can be read.
                let asked = cmd.split_whitespace().last().unwrap_or_default();
                return Err(push::refuse_fetcher(asked, opts.hello, format!("{e:#}")).await);
            }
        },
        (None, None) => {
            return Err(SetupError(
                "dos send: no image given (dos send IMAGE, or as an ssh forced command)".into(),
            )
            .into())
        }
    };
    if !opts.allow.allows(&image) {
        let why = format!(
            "{image} may not be taken from here (dos send --allow {})",
            opts.allow.describe()
        );
        return Err(push::refuse_fetcher(&image, opts.hello, why).await);
    }
    let mut p = PushOptions::new(image, Vec::new());
    // Only what the fetcher's engine lacks, always: the registry path
    // would need a registry here that the fetcher's engine can reach.
    p.via = Via::Delta;
    p.idle = opts.idle;
    p.hello = opts.hello;
    p.docker_host = opts.docker_host;
    // The fetcher shows progress; ours would reach its terminal as noise.
    p.display = Mode::Quiet;
    push::send_over_stdio(p).await
}
