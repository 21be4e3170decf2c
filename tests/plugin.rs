//! `docker dos …` through the real docker CLI: `dos install-plugin` links
//! the binary that ships as a CLI plugin, the docker CLI lists it, and a
//! push through it honours docker's own `-H` and `--context` (and refuses
//! its TLS flags, saying what to use).

mod common;

use std::process::Command;

use common::*;

/// The docker CLI with a fresh home of its own (plugins, contexts).
fn docker_cli(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .env("HOME", home)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_CONFIG")
        .env("DOCKER_BUILDKIT", "0")
        .env("PATH", path_with_dos())
        .output()
        .expect("running the docker CLI")
}

#[test]
fn docker_dos_push_works_and_honours_dockers_daemon_flags() {
    let e = need_env!();
    let home = tempfile::tempdir().unwrap();
    let plugins = home.path().join(".docker/cli-plugins");
    let out = Command::new(shipped_dos())
        .args(["install-plugin", "--dir"])
        .arg(&plugins)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let link = plugins.join("docker-dos");
    assert_eq!(std::fs::read_link(&link).unwrap(), shipped_dos());
    // Again: the link is replaced, not refused.
    let again = Command::new(shipped_dos())
        .args(["install-plugin", "--dir"])
        .arg(&plugins)
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", stderr(&again));

    // The docker CLI finds it by its metadata.
    let help = docker_cli(home.path(), &["--help"]);
    let listed = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(
        listed.lines().any(|l| l.trim_start().starts_with("dos*")),
        "{listed}"
    );

    // -H: the daemon named there is the one read.
    let ssh = format!("ssh -F {}", e.ssh_config);
    let a = format!("{}:1", unique("plugin-host"));
    let ida = build_image(&e.local, &a, fresh_seed(), 16 * 1024, "plugin -H\n");
    let out = Command::new("docker")
        .args(["-H", &e.local, "dos", "push", &a, "--to", "remote"])
        .env("HOME", home.path())
        .env_remove("DOCKER_HOST")
        .env("DOS_SSH", &ssh)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(image_id(&e.remote, &a).as_deref(), Some(ida.as_str()));

    // --context: the context's endpoint (the peer daemon, not DOCKER_HOST).
    let made = docker_cli(
        home.path(),
        &[
            "context",
            "create",
            "peer",
            "--docker",
            &format!("host={}", e.peer),
        ],
    );
    assert!(made.status.success(), "{}", stderr(&made));
    let b = format!("{}:1", unique("plugin-context"));
    let idb = build_image(&e.peer, &b, fresh_seed(), 16 * 1024, "plugin --context\n");
    let out = Command::new("docker")
        .args(["--context", "peer", "dos", "push", &b, "--to", "remote"])
        .env("HOME", home.path())
        .env("DOCKER_HOST", &e.local) // what --context must win over
        .env("DOS_SSH", &ssh)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(image_id(&e.remote, &b).as_deref(), Some(idb.as_str()));

    // TLS flags: refused, saying what to use.
    let out = Command::new("docker")
        .args(["--tlsverify", "dos", "push", &b, "--to", "remote"])
        .env("HOME", home.path())
        .env("DOS_SSH", &ssh)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("DOCKER_TLS_VERIFY"),
        "{}",
        stderr(&out)
    );
}
