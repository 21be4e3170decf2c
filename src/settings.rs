//! Every setting dos takes from the environment, read here and nowhere else
//! (flags with an environment twin, such as `DOS_HELLO_TIMEOUT`, are
//! declared with their flag in [`crate::cli`]).
//!
//! A value that can't be used is never fatal: a warning names the variable
//! and what is done instead.
//!
//! | variable | meaning |
//! |---|---|
//! | `DOCKER_HOST`, `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH` | the daemon, as the docker CLI reads them |
//! | `LOCAL_DOCKER_REGISTRY_PORT`, `DOCKER_REGISTRY_NGROK`, `NGROK_AUTHTOKEN`, CI markers | where a push runs ([`crate::setup`]) |
//! | `XDG_CACHE_HOME`, `HOME` | where dos keeps state between runs ([`cache_dir`]) |
//! | `DOS_SPOOL_DIR`, `DOS_SPOOL_MAX`, `DOS_SPOOL_FAST` | the far side's resume spool |
//! | `DOS_READ_STORE` | `auto` or `never`: read the daemon's store directly |
//! | `DOS_CAPTURE_PORT`, `DOS_CAPTURE_SEED` | the capture registry |
//! | `SSH_ORIGINAL_COMMAND` | what an ssh forced command was asked to run |
//! | `DOS_LOG` | a tracing filter |
//! | `DOCKER_CONFIG` | the docker CLI's contexts, for the `docker dos` plugin's `--context` |

use std::path::PathBuf;

/// A variable's value; None when unset, empty or not UTF-8.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// DOCKER_HOST, or the default socket.
pub fn docker_host() -> String {
    var("DOCKER_HOST").unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

/// DOCKER_TLS_VERIFY set to anything but `0`.
pub fn docker_tls_verify() -> bool {
    var("DOCKER_TLS_VERIFY").is_some_and(|v| v != "0")
}

/// Where the daemon's TLS certificates are: DOCKER_CERT_PATH, else
/// `~/.docker`; None when neither variable is set.
pub fn docker_cert_dir() -> Option<PathBuf> {
    var("DOCKER_CERT_PATH")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".docker")))
}

/// The docker CLI's configuration directory (its contexts): DOCKER_CONFIG,
/// else `~/.docker`.
pub fn docker_config_dir() -> Option<PathBuf> {
    var("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".docker")))
}

/// `~` at the start of a path the user gave, as a shell would expand it.
pub fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), var("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// Where dos keeps state between runs on this machine (the resume spool,
/// what the capture registry learned): `$XDG_CACHE_HOME/dos`, else
/// `~/.cache/dos`; None when neither variable is set.
pub fn cache_dir() -> Option<PathBuf> {
    match var("XDG_CACHE_HOME") {
        Some(c) => Some(PathBuf::from(c).join("dos")),
        None => var("HOME").map(|h| PathBuf::from(h).join(".cache/dos")),
    }
}

/// The resume spool's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    /// `DOS_SPOOL_DIR`, else the cache directory's `spool`.
    pub dir: Option<PathBuf>,
    /// `DOS_SPOOL_MAX`: 0 turns the spool off; None: not a size (off).
    pub max: Option<u64>,
    /// `DOS_SPOOL_FAST`.
    pub fast: u64,
}

pub fn spool(default_max: u64, default_fast: u64) -> SpoolSettings {
    SpoolSettings {
        dir: var("DOS_SPOOL_DIR")
            .map(PathBuf::from)
            .or_else(|| cache_dir().map(|c| c.join("spool"))),
        max: size("DOS_SPOOL_MAX", default_max, "the spool is off"),
        fast: size("DOS_SPOOL_FAST", default_fast, "using the default").unwrap_or(default_fast),
    }
}

/// May a daemon's store be read directly (`DOS_READ_STORE`: `auto`, the
/// default, or `never`)?
pub fn read_store() -> bool {
    choice("DOS_READ_STORE", &["auto", "never"]) == "auto"
}

/// The capture registry's port (`DOS_CAPTURE_PORT`; 0 or a value that is
/// not a port: capture is off).
pub fn capture_port(default: u16) -> Option<u16> {
    match var("DOS_CAPTURE_PORT") {
        None => Some(default),
        Some(v) => match v.parse::<u16>() {
            Ok(0) => None,
            Ok(p) => Some(p),
            Err(_) => {
                tracing::warn!("DOS_CAPTURE_PORT={v:?} is not a port; capture is off");
                None
            }
        },
    }
}

/// `DOS_CAPTURE_SEED`: `auto` (the default), `always` or `never`.
pub fn capture_seed() -> &'static str {
    choice("DOS_CAPTURE_SEED", &["auto", "always", "never"])
}

/// What an ssh forced command was asked to run.
pub fn ssh_original_command() -> Option<String> {
    var("SSH_ORIGINAL_COMMAND")
}

/// The `DOS_LOG` tracing filter, if set.
pub fn log_filter() -> Option<String> {
    var("DOS_LOG")
}

/// One of `choices` (the first is the default, also for a value not among
/// them, with a warning).
fn choice(name: &str, choices: &[&'static str]) -> &'static str {
    let Some(v) = var(name) else {
        return choices[0];
    };
    match choices.iter().find(|c| **c == v) {
        Some(c) => c,
        None => {
            tracing::warn!(
                "{name}={v:?}: expected {}; using {}",
                choices.join(", "),
                choices[0]
            );
            choices[0]
        }
    }
}

/// A size (`2G`, `500M`, `40M`) from the environment, `default` when unset;
/// None, with a warning ending in `otherwise`, when it isn't a size.
fn size(name: &str, default: u64, otherwise: &str) -> Option<u64> {
    match var(name) {
        Some(v) => {
            let n = parse_size(&v);
            if n.is_none() {
                tracing::warn!("{name}={v:?} is not a size (e.g. 2G, 500M); {otherwise}");
            }
            n
        }
        None => Some(default),
    }
}

/// `1234`, `500K`, `2M`, `4G`, `1T` (binary multiples).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        (i, 't' | 'T') => (&s[..i], 40),
        _ => (s, 0),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("500m"), Some(500 << 20));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
