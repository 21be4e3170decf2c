//! A far host as `--to` names it, and the user's own `ssh` that reaches it.
//!
//! `[ssh://][user@]host[:port]`, or an alias of the user's ssh config. dos
//! never adds ssh options of its own: the user's config, agent and
//! known_hosts decide, host-key checking included.

use std::fmt;

use anyhow::{bail, Result};

use crate::error::SetupError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// `user@host` or `host`, as ssh takes it.
    pub destination: String,
    pub port: Option<u16>,
}

impl Host {
    pub fn parse(s: &str) -> Result<Host> {
        let bad = |why: &str| -> Result<Host> {
            bail!(SetupError(format!(
                "--to {s:?}: {why} (expected [ssh://][user@]host[:port] or an ssh config alias)"
            )))
        };
        let rest = s.strip_prefix("ssh://").unwrap_or(s);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (user, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        // [v6]:port, [v6], host:port, host
        let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
            match inner.split_once(']') {
                Some((h, "")) => (h, None),
                Some((h, p)) => match p.strip_prefix(':') {
                    Some(p) => (h, Some(p)),
                    None => return bad("junk after the bracketed address"),
                },
                None => return bad("an unclosed ["),
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) if !p.contains(':') => (h, Some(p)),
                Some(_) => (hostport, None), // a bare IPv6 address
                None => (hostport, None),
            }
        };
        let port = match port {
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => return bad("the port is not a number from 1 to 65535"),
            },
            None => None,
        };
        // Nothing ssh could read as an option, nothing a shell or ssh's own
        // token expansion would act on.
        let fine = |w: &str| {
            !w.is_empty()
                && !w.starts_with('-')
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:%+".contains(&b))
        };
        if !fine(host) {
            return bad("not a host name");
        }
        if user.is_some_and(|u| !fine(u)) {
            return bad("not a user name");
        }
        Ok(Host {
            destination: match user {
                Some(u) => format!("{u}@{host}"),
                None => host.to_string(),
            },
            port,
        })
    }

    /// The argv that runs `remote` (one shell command line) on this host
    /// with `ssh` (the user's ssh command, e.g. `["ssh"]`).
    pub fn command(&self, ssh: &[String], remote: &str) -> Vec<String> {
        let mut argv = ssh.to_vec();
        if let Some(p) = self.port {
            argv.push("-p".into());
            argv.push(p.to_string());
        }
        argv.push("--".into());
        argv.push(self.destination.clone());
        argv.push(remote.to_string());
        argv
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.destination),
            None => f.write_str(&self.destination),
        }
    }
}

/// `word` as the far shell reads it back: bare where that is safe.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> (String, Option<u16>) {
        let h = Host::parse(s).unwrap();
        (h.destination, h.port)
    }

    #[test]
    fn forms() {
        assert_eq!(h("prod"), ("prod".into(), None));
        assert_eq!(h("deploy@prod"), ("deploy@prod".into(), None));
        assert_eq!(h("deploy@prod:2222"), ("deploy@prod".into(), Some(2222)));
        assert_eq!(
            h("ssh://deploy@10.0.0.1:22"),
            ("deploy@10.0.0.1".into(), Some(22))
        );
        assert_eq!(h("ssh://prod/"), ("prod".into(), None));
        assert_eq!(h("[::1]:2200"), ("::1".into(), Some(2200)));
        assert_eq!(h("root@[fe80::1]"), ("root@fe80::1".into(), None));
        assert_eq!(h("fe80::1"), ("fe80::1".into(), None));
        for bad in [
            "",
            "-oProxyCommand=x",
            "prod:0",
            "prod:http",
            "a b",
            "p;rm",
            "-l@x",
            "[::1",
            "u@",
            "$(x)",
        ] {
            assert!(Host::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn argv() {
        let ssh = vec!["ssh".to_string()];
        let h = Host::parse("deploy@prod:2222").unwrap();
        assert_eq!(
            h.command(&ssh, "dos pull app:1"),
            ["ssh", "-p", "2222", "--", "deploy@prod", "dos pull app:1"]
        );
        assert_eq!(quote("app:1"), "app:1");
        assert_eq!(quote("a'b"), r"'a'\''b'");
    }
}
