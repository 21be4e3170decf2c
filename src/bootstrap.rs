//! `dos push IMAGE --to HOST` (and `dos fetch IMAGE --from HOST`): the
//! session over the user's ssh, and dos bringing itself to a host that has
//! no dos (or one that speaks another protocol).
//!
//! The first try is the plain `dos pull IMAGE` (`dos send IMAGE`), exactly what an ssh forced
//! command expects, so a host set up by hand costs one connection. Only when
//! that finds no dos, or a dos of another protocol, does dos look closer: a
//! probe (a POSIX sh script) says the far system, its architecture and
//! whether this very build already waits in
//! `~/.cache/dos/bin/dos-VERSION`. If not, and the user agrees (asked on a
//! terminal, `--install` otherwise), this executable is copied over the same
//! ssh to a temporary name, its sha256 checked and its `--version` run
//! there, then renamed into place, and the push runs that copy.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{PeerError, SetupError};
use crate::host::{quote, Host};
use crate::protocol::handshake::HandshakeError;
use crate::push::{self, PushOptions, PushReport};

/// What to do when the far host lacks this dos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// Ask when stdin and stderr are a terminal; refuse otherwise.
    Ask,
    /// Copy it without asking (`--install`).
    Yes,
    /// Refuse, saying `--install` (a push to several hosts asks no one:
    /// their prompts would interleave).
    No,
}

/// Where a host is and how it is reached.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: Host,
    /// The user's ssh command and its own options (`ssh` unless DOS_SSH).
    pub ssh: Vec<String>,
    pub install: Install,
}

/// The protocol marker the probe prints first: anything else means the
/// host did not run it (a forced command answered instead).
const PROBE_MARK: &str = "dos-probe-1";

/// The copy's directory on the far host, as its shell expands it.
const FAR_DIR: &str = "${XDG_CACHE_HOME:-$HOME/.cache}/dos/bin";

fn far_name() -> String {
    format!("dos-{}", env!("CARGO_PKG_VERSION"))
}

impl Target {
    /// The argv that runs the far host's own `dos pull IMAGE`.
    pub fn pull_command(&self, image: &str) -> Vec<String> {
        self.host
            .command(&self.ssh, &format!("dos pull {}", quote(image)))
    }

    /// The argv that runs the far host's own `dos send IMAGE`.
    pub fn send_command(&self, image: &str) -> Vec<String> {
        self.host
            .command(&self.ssh, &format!("dos send {}", quote(image)))
    }
}

/// Push `opts.image` to `to`, bringing dos there if it must.
pub async fn push_to(opts: PushOptions, to: &Target) -> Result<PushReport> {
    let args = format!("pull {}", quote(&opts.image));
    run_on(to, &args, |command| {
        let mut o = opts.clone();
        o.command = command;
        push::push(o)
    })
    .await
}

/// Run `attempt` with the command that starts `dos ARGS` on `to` (ARGS
/// quoted for its shell): first its own dos on PATH (what a forced command
/// expects); should that find no dos, or one of another protocol, this dos
/// is brought there (if the user agrees) and `attempt` runs again with that
/// copy.
pub async fn run_on<T, F, Fut>(to: &Target, args: &str, mut attempt: F) -> Result<T>
where
    F: FnMut(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let first = to.host.command(&to.ssh, &format!("dos {args}"));
    let err = match attempt(first).await {
        Ok(r) => return Ok(r),
        Err(e) => e,
    };
    let why = match needs_dos(&err) {
        Some(why) => why,
        None => return Err(err),
    };
    tracing::info!("dos: {why} on {}; looking closer", to.host);
    let exe = Executable::this()?;
    let found = probe(to, &exe).await?;
    if found.os != std::env::consts::OS || found.arch != std::env::consts::ARCH {
        bail!(SetupError(format!(
            "{} runs {} on {}, this dos is a {} {} binary: install dos {} for {} {} there",
            to.host,
            found.os,
            found.arch,
            std::env::consts::OS,
            std::env::consts::ARCH,
            env!("CARGO_PKG_VERSION"),
            found.os,
            found.arch,
        )));
    }
    if !found.cached {
        agree(to, &why, &exe)?;
        install(to, &exe).await?;
    } else {
        tracing::info!(
            "dos: using the dos {} copied to {} before",
            env!("CARGO_PKG_VERSION"),
            to.host
        );
    }
    let copy = format!("exec {FAR_DIR}/{} {args}", far_name());
    attempt(to.host.command(&to.ssh, &format!("sh -c {}", quote(&copy)))).await
}

/// The first try found no dos, or one that speaks another protocol: what
/// to tell the user, or None for any other failure.
fn needs_dos(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|c| {
        if let Some(PeerError::Missing { .. }) = c.downcast_ref::<PeerError>() {
            return Some("no dos on PATH".to_string());
        }
        match c.downcast_ref::<HandshakeError>() {
            Some(HandshakeError::VersionMismatch {
                theirs, release, ..
            }) => Some(format!(
                "dos {release} (protocol {theirs}) is installed, this is dos {} (protocol {})",
                env!("CARGO_PKG_VERSION"),
                crate::protocol::handshake::VERSION
            )),
            _ => None,
        }
    })
}

/// This executable: what gets copied.
struct Executable {
    path: PathBuf,
    sha256: String,
    len: u64,
}

impl Executable {
    fn this() -> Result<Executable> {
        let path = std::env::current_exe().context("finding this dos executable")?;
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Executable {
            sha256: hex::encode(Sha256::digest(&bytes)),
            len: bytes.len() as u64,
            path,
        })
    }
}

struct Found {
    os: String,
    arch: String,
    /// This very build is in the far cache already.
    cached: bool,
}

/// Ask the far host what it is and whether it holds this build.
async fn probe(to: &Target, exe: &Executable) -> Result<Found> {
    let script = format!(
        r#"echo {PROBE_MARK}; uname -s; uname -m; c="{FAR_DIR}/{name}"; if [ -x "$c" ]; then (sha256sum "$c" 2>/dev/null || shasum -a 256 "$c" 2>/dev/null) | cut -d' ' -f1; else echo none; fi"#,
        name = far_name()
    );
    let out = far_sh(to, &script, Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", to.ssh[0]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    match lines.as_slice() {
        [PROBE_MARK, os, arch, sum, ..] => Ok(Found {
            os: os.to_ascii_lowercase().replace("darwin", "macos"),
            arch: match *arch {
                "amd64" => "x86_64".into(),
                "arm64" => "aarch64".into(),
                a => a.to_string(),
            },
            cached: *sum == exe.sha256,
        }),
        _ => bail!(PeerError::Refused(format!(
            "{} did not run dos's probe (is its key locked to a forced command?): install dos {} there{}",
            to.host,
            env!("CARGO_PKG_VERSION"),
            printed(&out.stderr)
        ))),
    }
}

/// `script` run by `sh` on the far host over the user's ssh (sh, whatever
/// the user's login shell), its stdout and stderr piped here.
fn far_sh(to: &Target, script: &str, stdin: Stdio) -> tokio::process::Command {
    let argv = to
        .host
        .command(&to.ssh, &format!("sh -c {}", quote(script)));
    let mut c = tokio::process::Command::new(&argv[0]);
    c.args(&argv[1..])
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// The user's yes: `--install`, or an answer at the terminal.
fn agree(to: &Target, why: &str, exe: &Executable) -> Result<()> {
    let refuse = || {
        SetupError(format!(
            "{why} on {}: run again with --install to copy this dos ({:.1} MB) to {FAR_DIR}/{} there, or install dos {} on it",
            to.host,
            exe.len as f64 / 1e6,
            far_name(),
            env!("CARGO_PKG_VERSION"),
        ))
    };
    if to.install == Install::Yes {
        return Ok(());
    }
    if to.install == Install::No
        || !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal())
    {
        bail!(refuse());
    }
    eprint!(
        "dos: {why} on {}. Copy this dos ({:.1} MB) to {FAR_DIR}/{} there? [y/N] ",
        to.host,
        exe.len as f64 / 1e6,
        far_name()
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
        Ok(())
    } else {
        bail!(refuse())
    }
}

/// Copy this executable to the far cache: a temporary name, the sha256
/// checked and the copy run there, then renamed into place.
async fn install(to: &Target, exe: &Executable) -> Result<()> {
    let name = far_name();
    tracing::info!(
        "dos: copying dos {} ({:.1} MB) to {}:{FAR_DIR}/{name}",
        env!("CARGO_PKG_VERSION"),
        exe.len as f64 / 1e6,
        to.host
    );
    let script = format!(
        r#"set -e; umask 022; d="{FAR_DIR}"; mkdir -p "$d"; t="$d/.{name}.$$"; trap 'rm -f "$t"' EXIT; cat >"$t"; s=$( (sha256sum "$t" 2>/dev/null || shasum -a 256 "$t") | cut -d' ' -f1); if [ "$s" != {sum} ]; then echo "dos: the copy arrived with sha256 $s, not {sum}" >&2; exit 1; fi; chmod 755 "$t"; "$t" --version >/dev/null; mv -f "$t" "$d/{name}"; trap - EXIT; echo dos-installed"#,
        sum = exe.sha256
    );
    let mut child = far_sh(to, &script, Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", to.ssh[0]))?;
    let mut stdin = child.stdin.take().context("ssh stdin")?;
    let mut file = tokio::fs::File::open(&exe.path)
        .await
        .with_context(|| format!("opening {}", exe.path.display()))?;
    // stdin is moved in and dropped at the end: closing the pipe is what
    // ends the far `cat`.
    let copied = async move {
        tokio::io::copy(&mut file, &mut stdin).await?;
        stdin.shutdown().await
    };
    let (copied, out) = tokio::join!(copied, async {
        // stdin is written meanwhile; the output is small.
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let _ = tokio::join!(
            tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut o),
            tokio::io::AsyncReadExt::read_to_end(&mut stderr, &mut e)
        );
        (o, e)
    });
    let status = child.wait().await.context("waiting for ssh")?;
    let (stdout, stderr) = out;
    if status.success() && String::from_utf8_lossy(&stdout).trim() == "dos-installed" {
        return Ok(());
    }
    let how = match copied {
        Err(e) => format!(" (the copy broke off: {e})"),
        Ok(()) => String::new(),
    };
    bail!(PeerError::FarFailure(format!(
        "copying dos to {} failed{how}: the copy there {}; a dynamically linked dos may not run there, the static release binary does{}",
        to.host,
        crate::transport::describe(Some(status)),
        printed(&stderr)
    )))
}

fn printed(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!("\n--- it printed ---\n{s}")
    }
}
