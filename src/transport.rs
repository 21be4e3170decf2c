//! The transport: the user's command (usually ssh), whose stdin/stdout carry
//! the protocol. Its stderr is passed through to ours line by line, and the
//! tail is kept so an error can show what the far side said.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::error::PeerError;
use crate::protocol::handshake::HandshakeError;

/// How much of the far side's stderr we keep for error messages.
const TAIL: usize = 4096;

/// The longest stderr line passed through whole.
const MAX_LINE: usize = 8192;

pub struct Transport {
    child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
    stderr_done: Option<tokio::task::JoinHandle<()>>,
    program: String,
}

impl Transport {
    /// Start `argv` with stdin/stdout piped.
    pub fn spawn(argv: &[String]) -> Result<Transport, PeerError> {
        let program = argv.first().cloned().unwrap_or_default();
        let mut child = Command::new(&program)
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| PeerError::CommandNotFound {
                program: program.clone(),
                cause: e.to_string(),
            })?;
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        let tail = stderr_tail.clone();
        let stderr_done = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                // A line is cut at MAX_LINE: the far side can't make this
                // side buffer more by never ending one.
                match (&mut lines)
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut line)
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        // Above the progress display, not through it.
                        crate::progress::write_stderr(&line);
                        let mut t = tail.lock().unwrap();
                        t.extend_from_slice(&line);
                        if t.len() > TAIL {
                            let cut = t.len() - TAIL;
                            t.drain(..cut);
                        }
                    }
                }
            }
        });
        Ok(Transport {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            child,
            stderr_tail,
            stderr_done: Some(stderr_done),
            program,
        })
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    /// Wait (bounded) for the command to exit and its stderr to drain, then
    /// describe how it ended and what it printed on stderr.
    pub async fn finish(&mut self, grace: Duration) -> (Option<ExitStatus>, String) {
        self.stdin.take();
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        };
        if let Some(h) = self.stderr_done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
        }
        let tail = String::from_utf8_lossy(&self.stderr_tail.lock().unwrap()).into_owned();
        (status, tail)
    }
}

/// "exited with status 127" / "was killed by signal 9" / "did not exit".
pub fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "exited".into(),
        },
        None => "did not exit and was stopped".into(),
    }
}

/// What the transport printed on stderr, then on stdout before (or
/// instead of) a handshake.
fn printed_both(stderr: &str, stdout: &str) -> String {
    let mut all = stderr.trim_end().to_string();
    if !stdout.is_empty() {
        if !all.is_empty() {
            all.push('\n');
        }
        all.push_str(stdout);
    }
    all
}

/// Add what the far side printed (and how the command ended) to errors
/// where the user needs it to act.
pub fn explain(
    e: anyhow::Error,
    status: Option<std::process::ExitStatus>,
    stderr: &str,
    command: &[String],
) -> anyhow::Error {
    if let Some(h) = e.downcast_ref::<HandshakeError>() {
        return match h {
            HandshakeError::Silent { waited, printed } => {
                let all = printed_both(stderr, printed);
                PeerError::NotDos {
                    detail: format!(
                        "no dos handshake from `{}` after {}s (--hello-timeout, DOS_HELLO_TIMEOUT); it {}{}",
                        shell_words(command),
                        waited.as_secs(),
                        describe(status),
                        if all.trim().is_empty() { " and printed nothing" } else { "" }
                    ),
                    printed: all,
                }
                .into()
            }
            // What a shell answers for a command it can't find (127) or
            // can't run (126).
            HandshakeError::NotDos { printed }
                if matches!(status.and_then(|s| s.code()), Some(126 | 127)) =>
            {
                PeerError::Missing {
                    detail: format!(
                        "`{}` {} before the dos handshake",
                        shell_words(command),
                        describe(status)
                    ),
                    printed: printed_both(stderr, printed),
                }
                .into()
            }
            HandshakeError::NotDos { printed } | HandshakeError::TooMuchNoise { printed } => {
                let all = printed_both(stderr, printed);
                PeerError::NotDos {
                    detail: format!(
                        "the transport command {} before the dos handshake",
                        describe(status)
                    ),
                    printed: all,
                }
                .into()
            }
            HandshakeError::Malformed(_) | HandshakeError::Io(_) if status.is_some() => {
                PeerError::NotDos {
                    detail: format!("{h}; the transport command {}", describe(status)),
                    printed: stderr.to_string(),
                }
                .into()
            }
            _ => e,
        };
    }
    if let Some(PeerError::ConnectionLost { detail, .. }) = e.downcast_ref::<PeerError>() {
        return PeerError::ConnectionLost {
            detail: format!("{detail}; the transport command {}", describe(status)),
            printed: stderr.to_string(),
        }
        .into();
    }
    e
}

/// The command as a user would type it (arguments quoted where needed).
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
