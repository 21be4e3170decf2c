//! Where a push runs, read from the environment in one place, and the plan
//! that follows from it (printed by `dos push --explain`).
//!
//! The variables of the original tool keep their meaning:
//! - LOCAL_DOCKER_REGISTRY_PORT=PORT: a registry already listens on
//!   127.0.0.1:PORT (a CI service container); push through it, start none.
//! - `DOCKER_REGISTRY_NGROK=<authtoken>` (or `true`, with NGROK_AUTHTOKEN):
//!   expose that registry through ngrok, for a daemon that can't reach this
//!   machine's loopback. Unlike the original, there is always basic auth.

use std::fmt;

/// How the image travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// The delta path when the far dos supports it, else the registry relay.
    Auto,
    /// Only the delta path; fail if it can't be used.
    Delta,
    /// Only the registry relay.
    Registry,
}

/// What the environment says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub registry_port: Option<u16>,
    pub ngrok: Ngrok,
    pub ci: Option<Ci>,
    pub docker_host: DockerHost,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Ngrok {
    Off,
    Token(String),
    /// DOCKER_REGISTRY_NGROK=true without NGROK_AUTHTOKEN.
    MissingToken,
}

impl fmt::Debug for Ngrok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ngrok::Off => write!(f, "Off"),
            Ngrok::Token(_) => write!(f, "Token(<redacted>)"),
            Ngrok::MissingToken => write!(f, "MissingToken"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ci {
    CircleCi,
    GithubActions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerHost {
    /// DOCKER_HOST unset: the local socket.
    Default,
    Unix(String),
    Tcp {
        host: String,
        tls: bool,
    },
    Ssh(String),
    Other(String),
}

impl DockerHost {
    pub fn parse(value: Option<&str>, tls_verify: bool) -> DockerHost {
        let Some(v) = value.filter(|v| !v.is_empty()) else {
            return DockerHost::Default;
        };
        if v.starts_with("unix://") {
            return DockerHost::Unix(v.to_string());
        }
        if let Some(rest) = v.strip_prefix("ssh://") {
            return DockerHost::Ssh(rest.to_string());
        }
        for (scheme, tls) in [
            ("tcp://", tls_verify),
            ("http://", false),
            ("https://", true),
        ] {
            if let Some(rest) = v.strip_prefix(scheme) {
                let authority = rest.split('/').next().unwrap_or(rest);
                let host = match authority.strip_prefix('[') {
                    Some(v6) => v6.split(']').next().unwrap_or(v6),
                    None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
                };
                return DockerHost::Tcp {
                    host: host.to_string(),
                    tls,
                };
            }
        }
        DockerHost::Other(v.to_string())
    }

    /// Can the daemon reach a port on this machine's 127.0.0.1? A local
    /// socket, or tcp to localhost: yes. Anything else is another machine
    /// (or a VM) as far as we can tell.
    pub fn reaches_our_loopback(&self) -> bool {
        match self {
            DockerHost::Default | DockerHost::Unix(_) => true,
            DockerHost::Tcp { host, .. } => {
                host == "localhost" || host == "::1" || host.starts_with("127.")
            }
            DockerHost::Ssh(_) | DockerHost::Other(_) => false,
        }
    }
}

impl fmt::Display for DockerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DockerHost::Default => write!(f, "the local socket (DOCKER_HOST unset)"),
            DockerHost::Unix(p) => write!(f, "{p}"),
            DockerHost::Tcp { host, tls } => {
                write!(f, "tcp to {host}{}", if *tls { " with TLS" } else { "" })
            }
            DockerHost::Ssh(h) => write!(f, "ssh://{h}"),
            DockerHost::Other(v) => write!(f, "{v}"),
        }
    }
}

impl Environment {
    /// From this process's environment.
    pub fn from_process() -> Environment {
        Environment::from_vars(crate::settings::var)
    }

    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Environment {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let truthy = |k: &str| get(k).is_some_and(|v| !matches!(v.as_str(), "0" | "false" | "no"));
        let ngrok = match get("DOCKER_REGISTRY_NGROK") {
            None => Ngrok::Off,
            Some(v) if matches!(v.as_str(), "0" | "false" | "no") => Ngrok::Off,
            Some(v) if matches!(v.as_str(), "1" | "true" | "yes") => match get("NGROK_AUTHTOKEN") {
                Some(t) => Ngrok::Token(t),
                None => Ngrok::MissingToken,
            },
            Some(token) => Ngrok::Token(token),
        };
        let ci = if truthy("CIRCLECI") {
            Some(Ci::CircleCi)
        } else if truthy("GITHUB_ACTIONS") {
            Some(Ci::GithubActions)
        } else {
            None
        };
        Environment {
            registry_port: get("LOCAL_DOCKER_REGISTRY_PORT").and_then(|p| p.parse().ok()),
            ngrok,
            ci,
            docker_host: DockerHost::parse(
                get("DOCKER_HOST").as_deref(),
                truthy("DOCKER_TLS_VERIFY"),
            ),
        }
    }
}

/// How the local daemon reaches the registry, if the registry path is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposure {
    /// The daemon reaches 127.0.0.1 directly.
    Loopback,
    /// Through an ngrok endpoint with generated basic auth.
    Ngrok(String),
    /// Through another tunnel (given by the caller).
    Tunnel(&'static str),
    /// It can't: the registry path would fail. The text says what to set.
    Unreachable(String),
}

/// What `dos push` will do, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Delta first (when the far dos supports it)?
    pub try_delta: bool,
    /// May fall back to (or go straight to) the registry path?
    pub registry_allowed: bool,
    /// Some(port): the service registry; None: the embedded one.
    pub registry_port: Option<u16>,
    pub exposure: Exposure,
    pub reasons: Vec<String>,
}

impl Plan {
    pub fn new(env: &Environment, via: Via, flag_port: Option<u16>) -> Plan {
        let mut reasons = Vec::new();
        let registry_port = flag_port.or(env.registry_port);
        if let Some(ci) = env.ci {
            reasons.push(format!("running under {ci:?}"));
        }
        reasons.push(format!("local daemon: {}", env.docker_host));
        let (try_delta, registry_allowed) = match (via, registry_port) {
            (Via::Delta, _) => {
                reasons.push(
                    "--via delta: only layers the far daemon lacks, read through the daemon API"
                        .into(),
                );
                (true, false)
            }
            (Via::Registry, _) => {
                reasons
                    .push("--via registry: the far daemon docker-pulls through the relay".into());
                (false, true)
            }
            (Via::Auto, Some(port)) => {
                reasons.push(format!(
                    "LOCAL_DOCKER_REGISTRY_PORT={port}: the registry path through that registry, as in the original tool"
                ));
                (false, true)
            }
            (Via::Auto, None) => {
                reasons.push("delta when the far dos supports it (only the layers it lacks), else the registry relay".into());
                (true, true)
            }
        };
        let exposure = match (&env.ngrok, env.docker_host.reaches_our_loopback()) {
            (Ngrok::Token(t), _) => Exposure::Ngrok(t.clone()),
            (Ngrok::MissingToken, _) => Exposure::Unreachable(
                "DOCKER_REGISTRY_NGROK=true needs the authtoken in NGROK_AUTHTOKEN (or set DOCKER_REGISTRY_NGROK to the token)".into(),
            ),
            (Ngrok::Off, true) => Exposure::Loopback,
            (Ngrok::Off, false) => Exposure::Unreachable(format!(
                "the daemon ({}) can't reach a registry on this machine's 127.0.0.1; \
                 set DOCKER_REGISTRY_NGROK=<ngrok authtoken> to expose it through ngrok, \
                 or use the delta path (the default; it reads the image through the daemon API and needs no tunnel)",
                env.docker_host
            )),
        };
        if registry_allowed {
            reasons.push(match &exposure {
                Exposure::Loopback => "registry path: the daemon pushes to 127.0.0.1 directly".into(),
                Exposure::Ngrok(_) => "registry path: the daemon pushes through an ngrok endpoint guarded by generated basic-auth credentials, closed when the push is done".into(),
                Exposure::Tunnel(name) => format!("registry path: the daemon pushes through the {name}, guarded by generated basic-auth credentials"),
                Exposure::Unreachable(why) => format!("registry path unavailable: {why}"),
            });
        }
        Plan {
            try_delta,
            registry_allowed,
            registry_port,
            exposure,
            reasons,
        }
    }

    /// The registry path is the only way, and it can't work: say so before
    /// anything starts.
    pub fn blocked(&self) -> Option<&str> {
        match (&self.exposure, self.try_delta, self.registry_allowed) {
            (Exposure::Unreachable(why), false, true) => Some(why),
            _ => None,
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = match (self.try_delta, self.registry_allowed) {
            (true, true) => "delta, falling back to the registry relay",
            (true, false) => "delta only",
            _ => "registry relay",
        };
        writeln!(f, "plan: {path}")?;
        if self.registry_allowed {
            let reg = match self.registry_port {
                Some(p) => format!("the registry at 127.0.0.1:{p} (LOCAL_DOCKER_REGISTRY_PORT)"),
                None => {
                    "an embedded registry on 127.0.0.1 (random port, per-run credentials)".into()
                }
            };
            writeln!(f, "registry: {reg}")?;
        }
        for r in &self.reasons {
            writeln!(f, "  - {r}")?;
        }
        if let Some(why) = self.blocked() {
            writeln!(f, "this push would stop before starting: {why}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Environment {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Environment::from_vars(move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn docker_hosts() {
        assert!(env(&[]).docker_host.reaches_our_loopback());
        for host in [
            "unix:///run/d.sock",
            "tcp://127.0.0.1:2375",
            "tcp://localhost:2375",
            "tcp://[::1]:2376",
        ] {
            let e = env(&[("DOCKER_HOST", host)]);
            assert!(e.docker_host.reaches_our_loopback(), "{host}");
        }
        let circle = env(&[
            ("DOCKER_HOST", "tcp://10.0.0.5:2376"),
            ("DOCKER_TLS_VERIFY", "1"),
        ]);
        assert_eq!(
            circle.docker_host,
            DockerHost::Tcp {
                host: "10.0.0.5".into(),
                tls: true
            }
        );
        assert!(!circle.docker_host.reaches_our_loopback());
        assert!(!env(&[("DOCKER_HOST", "ssh://me@box")])
            .docker_host
            .reaches_our_loopback());
    }

    #[test]
    fn original_variables() {
        let e = env(&[
            ("LOCAL_DOCKER_REGISTRY_PORT", "5000"),
            ("DOCKER_REGISTRY_NGROK", "tok"),
            ("CIRCLECI", "true"),
        ]);
        assert_eq!(e.registry_port, Some(5000));
        assert_eq!(e.ngrok, Ngrok::Token("tok".into()));
        assert_eq!(e.ci, Some(Ci::CircleCi));
        let t = env(&[
            ("DOCKER_REGISTRY_NGROK", "true"),
            ("NGROK_AUTHTOKEN", "abc"),
        ]);
        assert_eq!(t.ngrok, Ngrok::Token("abc".into()));
        assert_eq!(
            env(&[("DOCKER_REGISTRY_NGROK", "true")]).ngrok,
            Ngrok::MissingToken
        );
        assert_eq!(env(&[("DOCKER_REGISTRY_NGROK", "false")]).ngrok, Ngrok::Off);
        assert_eq!(
            env(&[("GITHUB_ACTIONS", "true")]).ci,
            Some(Ci::GithubActions)
        );
        assert!(
            !format!("{:?}", e.ngrok).contains("tok"),
            "the token is never printed"
        );
    }

    #[test]
    fn plans() {
        let local = env(&[]);
        let p = Plan::new(&local, Via::Auto, None);
        assert!(p.try_delta && p.registry_allowed && p.exposure == Exposure::Loopback);
        // The service registry keeps the registry path, as in the original.
        let svc = Plan::new(
            &env(&[("LOCAL_DOCKER_REGISTRY_PORT", "5000")]),
            Via::Auto,
            None,
        );
        assert!(!svc.try_delta && svc.registry_port == Some(5000));
        // A detached daemon: delta needs no tunnel; the registry path can't work.
        let far = env(&[("DOCKER_HOST", "tcp://10.0.0.5:2376")]);
        assert!(Plan::new(&far, Via::Auto, None).blocked().is_none());
        let why = Plan::new(&far, Via::Registry, None)
            .blocked()
            .map(str::to_owned);
        assert!(why.unwrap().contains("DOCKER_REGISTRY_NGROK"));
        let tunneled = env(&[
            ("DOCKER_HOST", "tcp://10.0.0.5:2376"),
            ("DOCKER_REGISTRY_NGROK", "tok"),
        ]);
        let p = Plan::new(&tunneled, Via::Registry, None);
        assert!(p.blocked().is_none() && matches!(p.exposure, Exposure::Ngrok(_)));
        assert!(
            !p.to_string().contains("tok"),
            "the plan never prints the token"
        );
    }
}
