//! `dos push IMAGE --to HOST` with the binary that ships, against the test
//! host's real sshd: a host with dos, one without (dos copies itself there
//! only with consent), one whose dos speaks another protocol, one locked to
//! a forced command, one of another architecture, and the user's own
//! ~/.ssh setup with no dos options at all.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use sha2::{Digest, Sha256};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn test_dir() -> PathBuf {
    PathBuf::from(std::env::var("DOS_TEST_DIR").expect("DOS_TEST_DIR"))
}

/// The shipped dos pushing `image` with `args` after it, over the test
/// hosts' ssh config (or `ssh_config`).
fn push_to(e: &Env, ssh_config: &str, image: &str, args: &[&str]) -> Output {
    let mut all = vec!["push", image];
    all.extend_from_slice(args);
    dos_command_of(&shipped_dos(), &e.local, &all)
        .env("DOS_SSH", format!("ssh -F {ssh_config}"))
        .stdin(Stdio::null())
        .output()
        .expect("running dos")
}

fn sha256_of(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

/// A host's HOME as a new one: no dos copied there yet (a rerun of the
/// tests in the same environment starts over).
fn fresh_home(home: &str) {
    let _ = std::fs::remove_dir_all(test_dir().join(home).join(".cache"));
}

/// The cache a host's HOME holds dos copies in, and what is in it.
fn cached(home: &str) -> Vec<String> {
    let dir = test_dir().join(home).join(".cache/dos/bin");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Is the ELF file at `p` free of a program interpreter (statically linked)?
fn is_static(p: &Path) -> bool {
    let b = std::fs::read(p).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", p.display());
    assert_eq!(b[4], 2, "64-bit ELF expected");
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) != PT_INTERP
    })
}

#[test]
fn a_host_with_dos_gets_the_image_over_the_users_ssh() {
    let e = need_env!();
    let image = format!("{}:1", unique("to-remote"));
    let id = build_image(&e.local, &image, fresh_seed(), 64 * 1024, "to remote\n");
    let out = push_to(e, &e.ssh_config, &image, &["--to", "remote"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(image_id(&e.remote, &image).as_deref(), Some(id.as_str()));
    assert!(
        err.lines()
            .last()
            .is_some_and(|l| l.starts_with(&format!("{image} on remote: sent "))),
        "{err}"
    );
    // What ran there is the static binary this test run built.
    let far = Command::new("ssh")
        .args(["-F", &e.ssh_config, "remote", "command -v dos"])
        .output()
        .unwrap();
    let far = PathBuf::from(String::from_utf8_lossy(&far.stdout).trim());
    assert_eq!(far, shipped_dos());
    assert!(is_static(&far), "{} is dynamically linked", far.display());
    // Nothing was copied to a host that has dos.
    assert!(!err.contains("copying dos"), "{err}");
}

#[test]
fn dos_brings_itself_to_a_host_without_it_only_when_told() {
    let e = need_env!();
    fresh_home("bare-home");
    let v1 = format!("{}:1", unique("to-bare"));
    let id1 = build_image(&e.local, &v1, fresh_seed(), 64 * 1024, "bare 1\n");

    // No terminal to ask at and no --install: refused, nothing copied.
    let out = push_to(e, &e.ssh_config, &v1, &["--to", "bare"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no dos on PATH on bare"), "{err}");
    assert!(err.contains("--install"), "{err}");
    assert_eq!(cached("bare-home"), Vec::<String>::new());
    assert_eq!(image_id(&e.remote, &v1), None);

    // On a terminal dos asks; "n" leaves the host as it is.
    let ask = |answer: &str| {
        let mut c = dos_command_of(&shipped_dos(), &e.local, &["push", &v1, "--to", "bare"]);
        c.env("DOS_SSH", format!("ssh -F {}", e.ssh_config));
        run_in_pty(&c, answer)
    };
    let (code, screen) = ask("n\n");
    assert_eq!(code, Some(2), "{screen}");
    assert!(
        screen.contains("no dos on PATH on bare. Copy this dos ("),
        "{screen}"
    );
    assert_eq!(cached("bare-home"), Vec::<String>::new());

    // "y": copied under its version, checked, used.
    let (code, screen) = ask("y\n");
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("copying dos"), "{screen}");
    assert_eq!(image_id(&e.remote, &v1).as_deref(), Some(id1.as_str()));
    let name = format!("dos-{VERSION}");
    assert_eq!(cached("bare-home"), vec![name.clone()], "no temp file left");
    let copy = test_dir().join("bare-home/.cache/dos/bin").join(&name);
    assert_eq!(sha256_of(&copy), sha256_of(&shipped_dos()));

    // Next time the copy is there: used without asking or copying.
    let v2 = format!("{}:2", v1.trim_end_matches(":1"));
    let id2 = build_image(&e.local, &v2, fresh_seed(), 64 * 1024, "bare 2\n");
    let out = push_to(e, &e.ssh_config, &v2, &["--to", "bare"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("copied to bare before"), "{err}");
    assert!(!err.contains("copying dos"), "{err}");
    assert_eq!(image_id(&e.remote, &v2).as_deref(), Some(id2.as_str()));
}

#[test]
fn a_dos_of_another_protocol_is_replaced_by_this_one() {
    let e = need_env!();
    fresh_home("old-home");
    let image = format!("{}:1", unique("to-old"));
    let id = build_image(&e.local, &image, fresh_seed(), 32 * 1024, "old\n");
    let out = push_to(e, &e.ssh_config, &image, &["--to", "old", "--install"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("dos 0.0.9 (protocol 1) is installed"), "{err}");
    assert_eq!(image_id(&e.remote, &image).as_deref(), Some(id.as_str()));
    assert_eq!(cached("old-home"), vec![format!("dos-{VERSION}")]);
}

#[test]
fn a_forced_command_host_is_told_to_install_dos_not_installed_into() {
    let e = need_env!();
    // The key may only run the host's (older) dos pull.
    let key = LockedKey::forcing(e, "dos pull");
    let image = format!("{}:1", unique("to-forced"));
    build_image(&e.local, &image, fresh_seed(), 16 * 1024, "forced\n");
    let out = push_to(e, &key.config(), &image, &["--to", "old", "--install"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("forced command"), "{err}");
    assert!(
        err.contains(&format!("install dos {VERSION} there")),
        "{err}"
    );
    assert!(!err.contains("copying dos"), "{err}");
    assert_eq!(image_id(&e.remote, &image), None);
}

#[test]
fn a_host_of_another_architecture_is_named_with_both() {
    let e = need_env!();
    let image = format!("{}:1", unique("to-arm"));
    build_image(&e.local, &image, fresh_seed(), 16 * 1024, "arm\n");
    let out = push_to(e, &e.ssh_config, &image, &["--to", "arm", "--install"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("arm runs linux on aarch64, this dos is a linux x86_64 binary"),
        "{err}"
    );
    assert_eq!(cached("arm-home"), Vec::<String>::new());
}

/// The home directory ssh reads ~/.ssh from: the passwd entry's, not $HOME.
fn passwd_home() -> String {
    let out = Command::new("getent")
        .args(["passwd", &uid()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(':')
        .nth(5)
        .unwrap()
        .to_string()
}

fn uid() -> String {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_users_own_ssh_setup_reaches_the_host_by_alias_and_by_address() {
    let e = need_env!();
    let ip = std::env::var("DOS_TEST_REMOTE_IP").unwrap();
    let home = passwd_home();
    let dir = tempfile::tempdir().unwrap();
    // A fresh ~/.ssh of the user's own (a private mount over the real one,
    // in a mount namespace of the test's): key, pinned host key, an alias.
    let ssh = dir.path().join("ssh");
    std::fs::create_dir(&ssh).unwrap();
    std::fs::copy(test_dir().join("id"), ssh.join("id_ed25519")).unwrap();
    std::fs::copy(test_dir().join("known_hosts"), ssh.join("known_hosts")).unwrap();
    std::fs::write(
        ssh.join("config"),
        format!("Host prod\n  HostName {ip}\n  User root\n  BatchMode yes\n"),
    )
    .unwrap();
    let a = format!("{}:1", unique("to-alias"));
    let b = format!("{}:1", unique("to-addr"));
    let ida = build_image(&e.local, &a, fresh_seed(), 16 * 1024, "alias\n");
    let idb = build_image(&e.local, &b, fresh_seed(), 16 * 1024, "address\n");
    let script = format!(
        r#"set -e
mkdir -p "{home}/.ssh"
mount -t tmpfs -o mode=700 dos-test-ssh "{home}/.ssh"
cp -a "{src}/." "{home}/.ssh/"
chmod 600 "{home}/.ssh/id_ed25519"
"{dos}" push {a} --to prod
"{dos}" push {b} --to ssh://root@{ip}:22"#,
        src = ssh.display(),
        dos = shipped_dos().display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("DOCKER_HOST", &e.local)
        .env_remove("DOS_SSH")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(image_id(&e.remote, &a).as_deref(), Some(ida.as_str()));
    assert_eq!(image_id(&e.remote, &b).as_deref(), Some(idb.as_str()));
}
