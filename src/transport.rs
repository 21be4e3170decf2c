//! The transport: the user's command (usually ssh), whose stdin/stdout carry
//! the protocol. Its stderr is passed through to ours line by line, and the
//! tail is kept so an error can show what the far side said.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::error::PeerError;

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
