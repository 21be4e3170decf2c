//! The ssh-only registry hub: a real `docker-registry` on the second
//! host's loopback (started by the harness), and `dos hub` as the forced
//! command of each key. A deploy machine pushes into it once (only the
//! blobs it lacks), servers of two engines get the image from it, and each
//! key is held to its lists; nothing on the hub listens beyond loopback.
//! Every test holds the link (they all cross it), so byte counts are each
//! one's own.

mod common;

use std::process::{Command, Output, Stdio};

use common::*;

/// The hub's forced command for a key with these lists.
fn hub_key(e: &Env, lists: &str) -> LockedKey {
    let registry = std::env::var("DOS_TEST_HUB_REGISTRY").expect("DOS_TEST_HUB_REGISTRY");
    LockedKey::forcing(e, &format!("dos hub --registry {registry} {lists}"))
}

/// `dos ARGS…` against the engine at `engine`, its ssh using `key`.
fn dos_with(engine: &str, key: &LockedKey, args: &[&str]) -> Output {
    let ssh = format!("ssh -F {}", key.config());
    let out = dos_env(engine, args, &[("DOS_SSH", &ssh)]);
    eprintln!("dos {args:?}:\n{}", stderr(&out));
    out
}

/// A request to the hub's registry, from inside the hub (its loopback).
fn on_the_hub(e: &Env, argv: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", e.netns))
        .args(argv)
        .output()
        .expect("nsenter");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The manifest digest the hub's registry holds under `repo:tag`, if any.
fn hub_manifest(e: &Env, repo: &str, tag: &str) -> Option<String> {
    let registry = std::env::var("DOS_TEST_HUB_REGISTRY").unwrap();
    let head = on_the_hub(
        e,
        &[
            "curl", "-sI",
            "-H", "Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
            &format!("http://{registry}/v2/{repo}/manifests/{tag}"),
        ],
    );
    head.starts_with("HTTP/1.1 200").then(|| {
        head.lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("docker-content-digest:")
                    .map(|d| d.trim().to_string())
            })
            .expect("a digest header")
    })
}

#[test]
fn a_push_into_the_hub_then_two_servers_get_it() {
    let e = need_env!();
    let _link = link_to_myself();
    let team = unique("team");
    let repo = format!("{team}/app");
    let image = format!("{repo}:1");
    let deployer = hub_key(e, &format!("--push '{team}/*'"));
    let server = hub_key(e, &format!("--pull '{team}/*'"));
    let seed = fresh_seed();

    // The first push carries the image; an update only its new layer.
    let pushed = |app: &str| {
        let id = build_image(&e.local, &image, seed, 4 * 1024 * 1024, app);
        let before = link_bytes(e);
        let out = dos_with(&e.local, &deployer, &["push", &image, "--to", "remote"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("into the hub's registry"),
            "{}",
            stderr(&out)
        );
        (id, link_bytes(e) - before)
    };
    let (_, first) = pushed("hub 1\n");
    assert!(hub_manifest(e, &repo, "1").is_some());
    let (v2, update) = pushed("hub 2\n");
    eprintln!("link bytes: first push {first}, update {update}");
    assert!(
        first > 4 * 1024 * 1024,
        "the first push moved only {first} bytes"
    );
    assert!(
        update * 10 < first,
        "the update moved {update} bytes of {first}"
    );
    let manifest = hub_manifest(e, &repo, "1").expect("the image in the hub");
    assert_clean(&e.local, &repo);

    // Two servers, two engines: each gets v2 from the hub.
    for (engine, want) in [(&e.peer, &v2), (&e.c_local, &manifest)] {
        let out = dos_with(engine, &server, &["fetch", &image, "--from", "remote"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            image_id(engine, &image).as_deref(),
            Some(want.as_str()),
            "on {engine}"
        );
        assert_eq!(run_container(engine, &image), "hub 2");
        assert_clean(engine, &repo);
    }
}

#[test]
fn hub_keys_are_held_to_their_lists() {
    let e = need_env!();
    let _link = link_to_myself();
    let team = unique("team-ro");
    let other = unique("other");
    let image = format!("{team}/app:1");
    let theirs = format!("{other}/app:1");
    build_image(&e.local, &image, fresh_seed(), 16 * 1024, "team\n");
    build_image(&e.local, &theirs, fresh_seed(), 16 * 1024, "other\n");

    // A read-only key can't push.
    let reader = hub_key(e, &format!("--pull '{team}/*'"));
    let out = dos_with(&e.local, &reader, &["push", &image, "--to", "remote"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("may not push into"),
        "{}",
        stderr(&out)
    );
    assert_eq!(hub_manifest(e, &format!("{team}/app"), "1"), None);

    // other/* pushed by its own key; a team/* key can neither read nor write it.
    let theirs_key = hub_key(e, &format!("--push '{other}/*'"));
    let out = dos_with(&e.local, &theirs_key, &["push", &theirs, "--to", "remote"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let team_key = hub_key(e, &format!("--push '{team}/*' --pull '{team}/*'"));
    let out = dos_with(&e.peer, &team_key, &["fetch", &theirs, "--from", "remote"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("may not read"), "{}", stderr(&out));
    assert_eq!(image_id(&e.peer, &theirs), None);
    let out = dos_with(&e.local, &team_key, &["push", &theirs, "--to", "remote"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    // Nor can any other command run through a hub key.
    let out = Command::new("ssh")
        .args(["-F", &team_key.config(), "remote", "sh", "-c", "id"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused to run"));
}

/// While a hub session is open, the only listener on the hub beyond its
/// loopback is what the testbed itself runs (sshd, the detached dockerd);
/// the registry is on loopback only and dos listens nowhere.
#[test]
fn nothing_on_the_hub_listens_beyond_loopback() {
    let e = need_env!();
    let _link = link_to_myself();
    let team = unique("team-ls");
    let key = hub_key(e, &format!("--pull '{team}/*'"));
    // A session that says nothing: the hub has said hello and waits.
    let mut held = Command::new("ssh")
        .args([
            "-F",
            &key.config(),
            "remote",
            "dos",
            "send",
            &format!("{team}/app:1"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut hello = [0u8; 8];
    std::io::Read::read_exact(held.stdout.as_mut().unwrap(), &mut hello).unwrap();
    assert_eq!(&hello, b"\x89DOS\r\n\x1a\n", "the hub said hello");
    let listeners = on_the_hub(e, &["ss", "-ltnpH"]);
    held.kill().unwrap();
    let _ = held.wait();
    let mut registry = 0;
    for l in listeners.lines() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        let local = cols.get(3).copied().unwrap_or_default();
        let loopback = local.starts_with("127.") || local.starts_with("[::1]");
        assert!(!l.contains("((\"dos\","), "dos listens on the hub: {l}");
        if l.contains("docker-registr") {
            registry += 1;
            assert!(loopback, "the registry listens beyond loopback: {l}");
        }
        if !loopback {
            assert!(l.contains("\"sshd\"") || l.contains("\"dockerd\""), "{l}");
        }
    }
    assert_eq!(registry, 1, "the hub's registry: {listeners}");
}

/// The address of fan host `alias` (its HostName in the harness's ssh config).
fn fan_ip(e: &Env, alias: &str) -> String {
    let cfg = std::fs::read_to_string(&e.ssh_config).unwrap();
    let block = cfg
        .split("\nHost ")
        .find(|b| b.lines().next() == Some(alias))
        .unwrap_or_else(|| panic!("no Host {alias} in {}", e.ssh_config));
    block
        .lines()
        .find_map(|l| l.trim().strip_prefix("HostName "))
        .unwrap()
        .to_string()
}

/// An ssh config naming f1 `hub`, reached with `key`; then the harness's.
fn with_hub(e: &Env, key: &LockedKey, path: &std::path::Path) -> String {
    let base = std::fs::read_to_string(&e.ssh_config).unwrap();
    let known = format!("{}/known_hosts", std::env::var("DOS_TEST_DIR").unwrap());
    let cfg = format!(
        "Host hub\n  HostName {}\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n{base}",
        fan_ip(e, "f1"),
        key.key().display()
    );
    std::fs::write(path, cfg).unwrap();
    path.display().to_string()
}

fn counter(dev: &str) -> u64 {
    ["rx_bytes", "tx_bytes"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(format!("/sys/class/net/{dev}/statistics/{f}"))
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}

/// `--hub`: the image into the hub (f1) once, then f2 and f3 each fetch it
/// from there over their own links: the uplink from here carries one copy.
#[test]
fn through_a_hub_the_uplink_carries_one_copy() {
    let e = need_env!();
    let _link = link_to_myself();
    assert!(e.fan.len() >= 3, "three fan hosts");
    let team = unique("team-fan");
    let image = format!("{team}/app:1");
    let id = build_image(&e.local, &image, fresh_seed(), 4 * 1024 * 1024, "via hub\n");
    let dir = tempfile::tempdir().unwrap();
    let deployer = hub_key(e, &format!("--push '{team}/*'"));
    let server = hub_key(e, &format!("--pull '{team}/*'"));
    let here = with_hub(e, &deployer, &dir.path().join("deployer"));
    let there = with_hub(e, &server, &dir.path().join("server"));
    let uplink = std::env::var("DOS_TEST_FAN_UPLINK").unwrap();
    let ports: Vec<u64> = e.fan[1..3].iter().map(|f| counter_in(e, &f.port)).collect();
    let before = counter(&uplink);
    let out = dos_env(
        &e.local,
        &[
            "push",
            &image,
            "--hub",
            "hub",
            "--to",
            "f2,f3",
            "--hub-ssh",
            &format!("ssh -F {there}"),
        ],
        &[("DOS_SSH", &format!("ssh -F {here}"))],
    );
    let err = stderr(&out);
    eprintln!("{err}");
    assert!(out.status.success(), "{err}");
    let carried = counter(&uplink) - before;
    for (f, b) in e.fan[1..3].iter().zip(&ports) {
        assert_eq!(
            image_id(&f.docker, &image).as_deref(),
            Some(id.as_str()),
            "on {}",
            f.alias
        );
        let got = counter_in(e, &f.port) - b;
        assert!(
            got > 4 * 1024 * 1024,
            "{} received only {got} bytes",
            f.alias
        );
    }
    eprintln!("uplink bytes: {carried}");
    assert!(
        carried > 4 * 1024 * 1024,
        "the uplink carried only {carried} bytes"
    );
    assert!(
        carried < 6 * 1024 * 1024,
        "the uplink carried {carried} bytes: more than one copy"
    );
    assert!(
        err.contains("into the hub once, on 2 of 2 servers"),
        "{err}"
    );
}

/// A counter of a port on the fan switch (inside its namespace).
fn counter_in(e: &Env, port: &str) -> u64 {
    ["rx_bytes", "tx_bytes"]
        .iter()
        .map(|f| {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &e.fan_switch,
                    "cat",
                    &format!("/sys/class/net/{port}/statistics/{f}"),
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}
