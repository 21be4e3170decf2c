//! dos as a Docker CLI plugin: `docker dos push app:1 --to prod`.
//!
//! The docker CLI runs `~/.docker/cli-plugins/docker-dos` with its own
//! global flags first, then `dos`, then the rest (`-H unix:///x.sock dos
//! push …`), and asks it for `docker-cli-plugin-metadata` when listing
//! plugins. Of the global flags, the daemon's (`-H`, `--context`) are
//! honoured, `--debug` means `-v`, `--log-level` is the CLI's own; TLS
//! flags are refused with what to use instead.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::error::SetupError;

/// The name the docker CLI finds a plugin by.
pub const FILE_NAME: &str = "docker-dos";

/// Is this process the plugin (named `docker-dos`)?
pub fn invoked_as_plugin(argv0: &str) -> bool {
    Path::new(argv0).file_name().and_then(|n| n.to_str()) == Some(FILE_NAME)
}

/// What `docker-cli-plugin-metadata` prints (the plugin spec's JSON).
pub fn metadata() -> String {
    serde_json::json!({
        "SchemaVersion": "0.1.0",
        "Vendor": "dos",
        "Version": env!("CARGO_PKG_VERSION"),
        "ShortDescription": "Push images to other machines over ssh, sending only what they lack",
    })
    .to_string()
}

/// A plugin invocation, read from the docker CLI's arguments.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    Metadata,
    /// dos's own arguments (after `dos`), and the daemon the docker CLI's
    /// flags chose (None: as DOCKER_HOST says).
    Run {
        args: Vec<String>,
        docker_host: Option<String>,
        debug: bool,
    },
}

/// Read the docker CLI's arguments (without argv[0]).
pub fn parse(args: &[String], docker_config: Option<&Path>) -> Result<Invocation> {
    if args.first().map(String::as_str) == Some("docker-cli-plugin-metadata") {
        return Ok(Invocation::Metadata);
    }
    let mut host = None;
    let mut context = None;
    let mut config = docker_config.map(Path::to_path_buf);
    let mut debug = false;
    let mut it = args.iter();
    loop {
        let Some(a) = it.next() else {
            bail!(SetupError(
                "docker ran the dos plugin without the `dos` command".into()
            ));
        };
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone().or_else(|| it.next().cloned()) {
                Some(v) => Ok(v),
                None => bail!(SetupError(format!("docker {name} without a value"))),
            }
        };
        match flag {
            "dos" => break,
            "-H" | "--host" => host = Some(value("--host")?),
            "-c" | "--context" => context = Some(value("--context")?),
            "--config" => config = Some(PathBuf::from(value("--config")?)),
            "-l" | "--log-level" => {
                value("--log-level")?;
            }
            "-D" | "--debug" => debug = true,
            f if f.starts_with("--tls") => bail!(SetupError(format!(
                "docker {f}: dos does not take the docker CLI's TLS flags; set DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH instead"
            ))),
            f => bail!(SetupError(format!(
                "docker {f}: a docker flag the dos plugin does not know; run dos directly"
            ))),
        }
    }
    let args: Vec<String> = it.cloned().collect();
    let docker_host = match (host, context) {
        (Some(_), Some(_)) => bail!(SetupError(
            "docker --host and --context together: give one".into()
        )),
        (Some(h), None) => Some(h),
        (None, Some(c)) => context_host(&c, config.as_deref())?,
        (None, None) => None,
    };
    Ok(Invocation::Run {
        args,
        docker_host,
        debug,
    })
}

/// The daemon a docker context names: its metadata's docker endpoint.
/// `default` is what DOCKER_HOST says.
fn context_host(name: &str, config: Option<&Path>) -> Result<Option<String>> {
    if name == "default" {
        return Ok(None);
    }
    let config = config.context("no docker config directory (neither DOCKER_CONFIG nor HOME)")?;
    let id = hex::encode(Sha256::digest(name.as_bytes()));
    let meta = config.join("contexts/meta").join(&id).join("meta.json");
    let text = std::fs::read_to_string(&meta)
        .with_context(|| format!("reading docker context {name:?} ({})", meta.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("reading docker context {name:?} ({})", meta.display()))?;
    let Some(host) = v["Endpoints"]["docker"]["Host"].as_str() else {
        bail!(SetupError(format!(
            "docker context {name:?} names no docker endpoint"
        )));
    };
    if config
        .join("contexts/tls")
        .join(&id)
        .join("docker")
        .exists()
    {
        bail!(SetupError(format!(
            "docker context {name:?} uses TLS: give dos DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH instead"
        )));
    }
    if !(host.starts_with("unix://") || host.starts_with("tcp://")) {
        bail!(SetupError(format!(
            "docker context {name:?} reaches its daemon at {host}; dos reaches a daemon over unix:// or tcp:// (to reach a far daemon's images, push to that host with --to)"
        )));
    }
    Ok(Some(host.to_string()))
}

/// Link this executable as `DIR/docker-dos`; returns the link's path.
/// An existing link is replaced; any other file there is left alone.
pub fn install(dir: &Path) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this dos executable")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let link = dir.join(FILE_NAME);
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?
        }
        Ok(_) => bail!(SetupError(format!(
            "{} exists and is not a link: remove it first",
            link.display()
        ))),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(&exe, &link)
        .with_context(|| format!("linking {} to {}", link.display(), exe.display()))?;
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Invocation> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse(&args, Some(Path::new("/nonexistent")))
    }

    #[test]
    fn docker_flags() {
        assert_eq!(
            run(&["docker-cli-plugin-metadata"]).unwrap(),
            Invocation::Metadata
        );
        assert_eq!(
            run(&[
                "-H",
                "unix:///x.sock",
                "--log-level=debug",
                "dos",
                "push",
                "a:1"
            ])
            .unwrap(),
            Invocation::Run {
                args: vec!["push".into(), "a:1".into()],
                docker_host: Some("unix:///x.sock".into()),
                debug: false
            }
        );
        assert_eq!(
            run(&["--context=default", "-D", "dos", "push"]).unwrap(),
            Invocation::Run {
                args: vec!["push".into()],
                docker_host: None,
                debug: true
            }
        );
        assert!(run(&["--tlsverify", "dos", "push"]).is_err());
        assert!(run(&["--context", "prod", "dos", "push"]).is_err());
        assert!(run(&["-H"]).is_err());
        assert!(run(&["push"]).is_err());
    }

    #[test]
    fn a_context_by_its_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let id = hex::encode(Sha256::digest(b"far"));
        let meta = dir.path().join("contexts/meta").join(&id);
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"far","Endpoints":{"docker":{"Host":"unix:///run/far.sock"}}}"#,
        )
        .unwrap();
        assert_eq!(
            context_host("far", Some(dir.path())).unwrap().as_deref(),
            Some("unix:///run/far.sock")
        );
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"far","Endpoints":{"docker":{"Host":"ssh://x"}}}"#,
        )
        .unwrap();
        assert!(context_host("far", Some(dir.path())).is_err());
    }
}
