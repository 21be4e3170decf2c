//! The command line (clap derive). Kept in the library so tests can parse
//! the command lines found in docs and CI examples with the real definition.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "dos",
    version,
    about = "Move Docker images between machines over any byte stream (usually ssh)",
    long_about = "Move Docker images between machines over any byte stream (usually ssh).\n\n\
        `dos push` runs a command (ssh, kubectl exec, sh -c …) that starts `dos pull` on the \
        far side, and the two talk over that command's stdin/stdout. The far side needs no \
        registry account and no open port: only permission to run `dos pull IMAGE`.",
    after_help = "Examples:\n  \
        dos push app:1 --to prod\n  \
        dos push app:1 --to deploy@prod:2222 --install\n  \
        dos push app:1 ssh prod dos pull app:1\n  \
        dos push app:1 -- ssh -p 2222 deploy@prod 'dos pull app:1'\n  \
        dos push app:1 sh -c 'DOCKER_HOST=unix:///run/other.sock dos pull app:1'"
)]
pub struct Cli {
    /// More log output on stderr (-v: debug, -vv: trace). DOS_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send IMAGE to HOST (--to), or to the dos pull that CMD starts on the far side.
    #[command(after_help = "Examples:\n  \
        dos push app:1 --to prod\n  \
        dos push app:1 ssh prod dos pull app:1\n  \
        dos push registry.example.com/team/app:2 -- ssh deploy@prod 'dos pull registry.example.com/team/app:2'\n\n\
        Environment:\n  \
        DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH   the local daemon, as for the docker CLI\n  \
        LOCAL_DOCKER_REGISTRY_PORT   use the registry already listening on 127.0.0.1:PORT\n  \
        DOCKER_REGISTRY_NGROK        ngrok authtoken (or `true` with NGROK_AUTHTOKEN): expose the registry\n  \
        through ngrok to a daemon that can't reach this machine's loopback (remote docker)")]
    Push(PushArgs),
    /// Receive an image from a dos push; speaks the protocol on stdin/stdout.
    #[command(
        after_help = "Normally started by `dos push` through ssh. Locked down as an ssh forced command:\n  \
        command=\"dos pull --allow 'app:*'\",restrict ssh-ed25519 AAAA…\n\
        sshd then runs only this; the pusher's `dos pull IMAGE` arrives in SSH_ORIGINAL_COMMAND and\n\
        anything else is refused."
    )]
    Pull(PullArgs),
    /// Get IMAGE from HOST's engine (--from), or from the dos send that CMD starts there.
    #[command(after_help = "Examples:\n  \
        dos fetch app:1 --from prod\n  \
        dos fetch app:1 ssh prod dos send app:1\n\n\
        Only the layers the local engine lacks cross, each checked against its diffID.")]
    Fetch(FetchArgs),
    /// Hand an image to a dos fetch; speaks the protocol on stdin/stdout.
    #[command(
        after_help = "Normally started by `dos fetch` through ssh. Read-only as an ssh forced command:\n  \
        command=\"dos send --allow 'app:*'\",restrict ssh-ed25519 AAAA…\n\
        sshd then runs only this; the fetcher's `dos send IMAGE` arrives in SSH_ORIGINAL_COMMAND,\n\
        only images the patterns allow are handed out, and nothing can be pushed with the key."
    )]
    Send(SendArgs),
    /// The way into a registry on this host's loopback, as an ssh forced command.
    #[command(after_help = "In authorized_keys on the hub, one line per key:\n  \
        command=\"dos hub --registry 127.0.0.1:5000 --push 'team/*'\",restrict ssh-ed25519 AAAA… deployer\n  \
        command=\"dos hub --registry 127.0.0.1:5000 --pull 'team/*'\",restrict ssh-ed25519 AAAA… server\n\
        Then `dos push team/app:1 --to hub` pushes into it (only the blobs it lacks) and\n\
        `dos fetch team/app:1 --from hub` gets the image from it.")]
    Hub(HubArgs),
    /// Make `docker dos …` run this dos: link it as a Docker CLI plugin.
    InstallPlugin(InstallPluginArgs),
}

#[derive(Debug, Args)]
pub struct InstallPluginArgs {
    /// Where the docker CLI looks for plugins.
    #[arg(long, value_name = "DIR", default_value = "~/.docker/cli-plugins")]
    pub dir: String,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The local image to send (name[:tag]).
    pub image: String,
    /// The command that starts `dos pull IMAGE` on the far side, with its
    /// arguments. `--` before it is accepted and optional. Not with --to.
    #[arg(
        required_unless_present = "to",
        conflicts_with = "to",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
    /// The far host, reached with your own ssh (its config, agent and
    /// known_hosts): `[ssh://][user@]host[:port]` or an ssh config alias.
    /// dos runs `dos pull IMAGE` there. Repeat it (or give `h1,h2`) to push
    /// to several hosts at once.
    #[arg(long, value_name = "HOST", value_delimiter = ',')]
    pub to: Vec<String>,
    /// Push into the dos hub HUB once, then have each --to host fetch the
    /// image from it (`dos fetch IMAGE --from HUB` run there): the uplink
    /// here carries one copy whatever the number of hosts.
    #[arg(long, value_name = "HUB", requires = "to")]
    pub hub: Option<String>,
    /// With --hub: the ssh command the --to hosts run to reach the hub
    /// (their own `ssh` by default).
    #[arg(long, value_name = "CMD", requires = "hub")]
    pub hub_ssh: Option<String>,
    /// With several --to hosts: at most N sessions at once.
    #[arg(long, value_name = "N", default_value_t = crate::fanout::DEFAULT_PARALLEL,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..256))]
    pub parallel: usize,
    /// With --to: should the far host have no dos, or one of another
    /// protocol, copy this one to ~/.cache/dos/bin there without asking.
    #[arg(long, requires = "to")]
    pub install: bool,
    /// With --to: the ssh command, with options of its own
    /// (e.g. `ssh -F ./ssh_config`).
    #[arg(long, env = "DOS_SSH", value_name = "CMD", default_value = "ssh")]
    pub ssh: String,
    /// No progress display; errors and the final line only.
    #[arg(short, long)]
    pub quiet: bool,
    /// Use the registry already listening on 127.0.0.1:PORT instead of
    /// starting the embedded one.
    #[arg(long, env = "LOCAL_DOCKER_REGISTRY_PORT", value_name = "PORT")]
    pub registry_port: Option<u16>,
    /// How the image travels: `delta` sends only the layers the far daemon
    /// lacks (zstd on the wire); `registry` lets the far daemon docker-pull
    /// through a relay; `auto` (default) uses delta when both ends can.
    #[arg(long, value_enum, default_value = "auto")]
    pub via: crate::push::Via,
    /// Print the plan (path, registry, tunnel) and why, then exit without
    /// starting anything.
    #[arg(long)]
    pub explain: bool,
    #[command(flatten)]
    pub link: LinkArgs,
}

/// Options both ends share.
#[derive(Debug, Args)]
pub struct LinkArgs {
    /// Give up when nothing at all arrives from the other side for SECONDS
    /// (both ends send heartbeats, so silence means the link is gone).
    /// At least 5.
    #[arg(long, env = "DOS_IDLE_TIMEOUT", value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(5..))]
    pub idle_timeout: u64,
    /// Give up when the other side's dos has not said hello after SECONDS:
    /// a host that hangs, a prompt nobody answers, a command that is not
    /// dos. Counted from the start, so it includes ssh connecting and any
    /// password typed at its prompt.
    #[arg(long, env = "DOS_HELLO_TIMEOUT", value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub hello_timeout: u64,
}

impl LinkArgs {
    pub fn idle(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.idle_timeout)
    }

    pub fn hello(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.hello_timeout)
    }
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image to receive; must match what the pusher offers. Without it:
    /// the image SSH_ORIGINAL_COMMAND names (an ssh forced command), or the
    /// pusher's offer when --allow is given.
    pub image: Option<String>,
    /// Accept only images matching PATTERN (`*` and `?` wildcards; a pattern
    /// without a tag allows every tag). Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub allow: Vec<String>,
    #[command(flatten)]
    pub link: LinkArgs,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The image to get (name[:tag]); it is tagged so here.
    pub image: String,
    /// The command that starts `dos send IMAGE` on the far side, with its
    /// arguments. `--` before it is accepted and optional. Not with --from.
    #[arg(
        required_unless_present = "from",
        conflicts_with = "from",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
    /// The far host, reached with your own ssh: `[ssh://][user@]host[:port]`
    /// or an ssh config alias. dos runs `dos send IMAGE` there.
    #[arg(long, value_name = "HOST")]
    pub from: Option<String>,
    /// With --from: should the far host have no dos, or one of another
    /// protocol, copy this one to ~/.cache/dos/bin there without asking.
    #[arg(long, requires = "from")]
    pub install: bool,
    /// With --from: the ssh command, with options of its own.
    #[arg(long, env = "DOS_SSH", value_name = "CMD", default_value = "ssh")]
    pub ssh: String,
    /// No progress display; errors and the final line only.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub link: LinkArgs,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The image to hand out. Without it: the image SSH_ORIGINAL_COMMAND
    /// names (an ssh forced command).
    pub image: Option<String>,
    /// Hand out only images matching PATTERN (`*` and `?` wildcards; a
    /// pattern without a tag allows every tag). Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub allow: Vec<String>,
    #[command(flatten)]
    pub link: LinkArgs,
}

#[derive(Debug, Args)]
pub struct HubArgs {
    /// The registry on this host's loopback.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5000")]
    pub registry: String,
    /// Repositories (`team/*`) this key may push into, and read. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub push: Vec<String>,
    /// Repositories this key may read. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub pull: Vec<String>,
    #[command(flatten)]
    pub link: LinkArgs,
}

impl FetchArgs {
    /// The host `--from` names, with the ssh that reaches it.
    pub fn target(&self) -> anyhow::Result<Option<crate::bootstrap::Target>> {
        use crate::bootstrap::{Install, Target};
        let Some(from) = &self.from else {
            return Ok(None);
        };
        Ok(Some(Target {
            host: crate::host::Host::parse(from)?,
            ssh: ssh_words(&self.ssh)?,
            install: if self.install {
                Install::Yes
            } else {
                Install::Ask
            },
        }))
    }
}

/// `--ssh CMD` as words.
fn ssh_words(ssh: &str) -> anyhow::Result<Vec<String>> {
    shlex::split(ssh)
        .filter(|w| !w.is_empty())
        .ok_or_else(|| crate::error::SetupError(format!("--ssh {ssh:?}: not a command")).into())
}

impl PushArgs {
    /// The hub `--hub` names, with the ssh that reaches it from here.
    pub fn hub_target(&self) -> anyhow::Result<Option<crate::bootstrap::Target>> {
        let Some(hub) = &self.hub else {
            return Ok(None);
        };
        Ok(Some(crate::bootstrap::Target {
            host: crate::host::Host::parse(hub)?,
            ssh: ssh_words(&self.ssh)?,
            install: crate::bootstrap::Install::No,
        }))
    }

    /// The hosts `--to` names, with the ssh that reaches them.
    pub fn targets(&self) -> anyhow::Result<Vec<crate::bootstrap::Target>> {
        use crate::bootstrap::{Install, Target};
        let ssh = ssh_words(&self.ssh)?;
        let mut seen = std::collections::HashSet::new();
        self.to
            .iter()
            .filter(|h| seen.insert(h.as_str()))
            .map(|h| {
                Ok(Target {
                    host: crate::host::Host::parse(h)?,
                    ssh: ssh.clone(),
                    install: if self.install {
                        Install::Yes
                    } else {
                        Install::Ask
                    },
                })
            })
            .collect()
    }
}
