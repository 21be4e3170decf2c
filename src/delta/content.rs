//! Layers read straight out of the containerd content store behind Docker's
//! containerd image store, as root on the daemon's machine: only the blobs
//! the far side lacks are read, as they are stored. `docker save` exports
//! the whole image first (2.4 s for the benchmark's 230 MB image here, when
//! one 1.7 MB layer was all the far side lacked).
//!
//! Docker's API names the containerd socket, not its store. The store is
//! found from the containerd process serving that socket (`--address`, or
//! `address` under `[grpc]` in its `--config`): its `--root`, or the
//! config's `root`, else containerd's default. A root counts only if it
//! holds the image's config blob, hashing to the config's digest; any blob
//! not there as the manifest describes it sends the transfer back to
//! `docker save`. The far side checks every blob anyway.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::docker::Daemon;
use crate::registry::path::Digest;

const DEFAULT_ROOT: &str = "/var/lib/containerd";
const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
const CONTENT: &str = "io.containerd.content.v1.content/blobs/sha256";
/// Image configs are small; a bigger file under its name is not one.
const MAX_CONFIG: u64 = 16 << 20;

/// The content store, checked to hold one image's config.
pub struct ContentStore {
    blobs: PathBuf,
    config: Vec<u8>,
}

impl ContentStore {
    /// The store behind `daemon`, if this process can read it there and it
    /// holds the config `config` (`DOS_READ_STORE=never`: not looked for).
    pub async fn open(daemon: &Daemon, config: &str) -> Option<ContentStore> {
        if !super::store::allowed() || !crate::capture::on_this_host(&daemon.host) {
            return None;
        }
        let info = daemon.api.info().await.ok()?;
        let socket = info.containerd?.address?;
        let config = config.to_string();
        let found = tokio::task::spawn_blocking(move || {
            roots(&socket)
                .into_iter()
                .find_map(|root| ContentStore::locate(&root, &config).ok())
        })
        .await
        .ok()
        .flatten();
        if found.is_none() {
            tracing::debug!("not reading the containerd content store: not found here");
        }
        found
    }

    /// The store under the containerd root `root`, if it holds `config`.
    pub fn locate(root: &Path, config: &str) -> io::Result<ContentStore> {
        let blobs = root.join(CONTENT);
        let mut body = Vec::new();
        File::open(blobs.join(hex_of(config)?))?
            .take(MAX_CONFIG)
            .read_to_end(&mut body)?;
        if format!("sha256:{}", hex::encode(Sha256::digest(&body))) != config {
            return Err(io::Error::other(
                "the stored config does not hash to its digest",
            ));
        }
        Ok(ContentStore {
            blobs,
            config: body,
        })
    }

    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// The blob `digest`, if the store holds it with `size` bytes.
    pub fn blob(&self, digest: &str, size: u64) -> io::Result<File> {
        let f = File::open(self.blobs.join(hex_of(digest)?))?;
        let len = f.metadata()?.len();
        if len != size {
            return Err(io::Error::other(format!(
                "blob {digest} is {len} bytes in the store, {size} in the manifest"
            )));
        }
        Ok(f)
    }
}

fn hex_of(digest: &str) -> io::Result<String> {
    Digest::parse(digest)
        .map(|d| d.hex().to_string())
        .ok_or_else(|| io::Error::other(format!("not a digest: {digest}")))
}

/// Roots of the containerd processes serving `socket`, then the default.
fn roots(socket: &str) -> Vec<PathBuf> {
    let socket = socket.trim_start_matches("unix://");
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return vec![DEFAULT_ROOT.into()];
    };
    for p in procs.flatten() {
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if let Some(root) = root_serving(&args, socket, |f| std::fs::read_to_string(f).ok()) {
            out.push(root);
        }
    }
    out.push(DEFAULT_ROOT.into());
    out
}

/// The root of the containerd started with `args`, if it serves `socket`.
/// `read` reads its config file.
fn root_serving(
    args: &[String],
    socket: &str,
    read: impl Fn(&str) -> Option<String>,
) -> Option<PathBuf> {
    let exe = args.first()?;
    if Path::new(exe).file_name()?.to_str()? != "containerd" {
        return None;
    }
    let flag = |names: &[&str]| {
        args.iter().enumerate().find_map(|(i, a)| {
            names.iter().find_map(|n| {
                if a == n {
                    args.get(i + 1).cloned()
                } else {
                    a.strip_prefix(&format!("{n}=")).map(str::to_string)
                }
            })
        })
    };
    let config = flag(&["--config", "-c"])
        .and_then(|f| read(&f))
        .unwrap_or_default();
    let address = flag(&["--address", "-a"])
        .or_else(|| toml_string(&config, Some("grpc"), "address"))
        .unwrap_or_else(|| DEFAULT_ADDRESS.into());
    if address != socket {
        return None;
    }
    let root = flag(&["--root"])
        .or_else(|| toml_string(&config, None, "root"))
        .unwrap_or_else(|| DEFAULT_ROOT.into());
    Some(root.into())
}

/// `key = "value"` in the TOML `text`, at the top level (`table` None) or in
/// `[table]`. Written here for the two keys needed: containerd's config is
/// flat where they are, and a wrong guess is caught by the config check.
fn toml_string(text: &str, table: Option<&str>, key: &str) -> Option<String> {
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('[') {
            current = Some(t.trim_end_matches(']').trim().to_string());
            continue;
        }
        if current.as_deref() != table {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.trim() == key {
            let v = v.trim();
            return v.strip_prefix('"')?.split('"').next().map(str::to_string);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn the_root_of_the_containerd_serving_the_socket() {
        let config = "version = 3\nroot = \"/srv/ctd\"\n[grpc]\n  address = \"/tmp/c.sock\"\n";
        let read = |_: &str| Some(config.to_string());
        let a = args("/usr/bin/containerd --config /etc/c.toml");
        assert_eq!(
            root_serving(&a, "/tmp/c.sock", read),
            Some("/srv/ctd".into())
        );
        assert_eq!(root_serving(&a, "/run/other.sock", read), None);
        let a = args("/usr/bin/containerd --root=/x --address /tmp/c.sock");
        assert_eq!(root_serving(&a, "/tmp/c.sock", |_| None), Some("/x".into()));
        let a = args("containerd");
        assert_eq!(
            root_serving(&a, DEFAULT_ADDRESS, |_| None),
            Some(DEFAULT_ROOT.into())
        );
        assert_eq!(
            root_serving(
                &args("containerd-shim-runc-v2 -address /tmp/c.sock"),
                "/tmp/c.sock",
                |_| None
            ),
            None
        );
    }

    #[test]
    fn a_root_counts_only_with_the_config_under_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join(CONTENT);
        std::fs::create_dir_all(&blobs).unwrap();
        let config = b"{\"config\":{}}";
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(config)));
        assert!(ContentStore::locate(dir.path(), &digest).is_err());
        std::fs::write(blobs.join(&digest[7..]), b"other").unwrap();
        assert!(ContentStore::locate(dir.path(), &digest).is_err());
        std::fs::write(blobs.join(&digest[7..]), config).unwrap();
        let store = ContentStore::locate(dir.path(), &digest).unwrap();
        assert_eq!(store.config(), config);
        assert!(store.blob(&digest, config.len() as u64).is_ok());
        assert!(store.blob(&digest, 1).is_err());
    }
}
