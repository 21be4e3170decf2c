//! Failures found by trying them: a far side that never speaks, a pusher
//! that never speaks, exit codes as the README's table gives them, a
//! pusher naming an image it does not hold, an interrupted transfer
//! (SIGINT, SIGTERM) on both paths and both sides, and a transport killed
//! mid-layer, again and again.

mod common;

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

const EXIT_OTHER: i32 = 1;
const EXIT_USAGE: i32 = 2;
const EXIT_TRANSPORT: i32 = 4;
const EXIT_FAR_SIDE: i32 = 5;
const EXIT_INTERRUPTED: i32 = 130;

#[test]
fn a_far_side_that_never_speaks_is_given_up_on_and_named() {
    let e = need_env!();
    let image = format!("{}:1", unique("silent-far"));
    build_image(&e.local, &image, fresh_seed(), 1024, "x\n");
    let started = Instant::now();
    let out = dos_env(
        &e.local,
        &[
            "push",
            &image,
            "sh",
            "-c",
            "echo 'Password: ' >&2; exec sleep 100",
        ],
        &[("DOS_HELLO_TIMEOUT", "2")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_TRANSPORT), "{err}");
    assert!(err.contains("no dos handshake"), "{err}");
    assert!(err.contains("after 2s"), "{err}");
    assert!(err.contains("exec sleep 100"), "names the command: {err}");
    assert!(err.contains("Password:"), "shows what it printed: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_pusher_that_never_speaks_is_given_up_on() {
    // Needs no daemon: the far side gives up before it would use one.
    let mut child = dos_command(
        "unix:///nonexistent.sock",
        &["pull", "--hello-timeout", "2", "app:1"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // stdin stays open and silent.
    let _stdin = child.stdin.take();
    let (code, err) = finish(child, Duration::from_secs(30));
    assert_eq!(code, Some(EXIT_TRANSPORT), "{err}");
    assert!(err.contains("no dos handshake came within 2s"), "{err}");
}

/// The README's exit-code table, the rows a command line decides.
#[test]
fn usage_errors_exit_2() {
    for args in [
        &["pull"][..],
        &["push", "app:1"],
        &["push", "--no-such-flag"],
    ] {
        let out = dos("unix:///nonexistent.sock", args);
        assert_eq!(
            out.status.code(),
            Some(EXIT_USAGE),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// The table's row for 1: a failure of this side that is none of the
/// others. The registry the user names (`--registry-port`) is not there, so
/// the local daemon's push into it fails: named, nothing left behind.
#[test]
fn a_failure_of_no_other_kind_exits_1_and_leaves_nothing() {
    let e = need_env!();
    let repo = unique("exit-one");
    let image = format!("{repo}:1");
    build_image(&e.local, &image, fresh_seed(), 1024, "x\n");
    let port = free_port().to_string();
    let far = format!("env DOCKER_HOST={} dos pull {image}", e.peer);
    let out = dos(
        &e.local,
        &[
            "push",
            "--via",
            "registry",
            "--registry-port",
            &port,
            &image,
            "sh",
            "-c",
            &far,
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_OTHER), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert_eq!(
        loopback_names(&e.local, &repo),
        Vec::<String>::new(),
        "{err}"
    );
    assert_eq!(image_id(&e.peer, &image), None, "{err}");
    docker(&e.local, &["rmi", &image]);
}

#[test]
fn via_delta_from_an_engine_dos_cannot_read_is_a_usage_error() {
    let e = need_env!();
    // dos reads no layers out of podman: `--via delta` can't be honoured.
    let out = dos(&e.podman, &["push", "--via", "delta", "app:1", "true"]);
    assert_eq!(out.status.code(), Some(EXIT_USAGE), "{}", stderr(&out));
    assert!(stderr(&out).contains("--via registry"), "{}", stderr(&out));
}

/// A pusher naming an image the far daemon has, without holding it, gets
/// nothing tagged: the far side asks for the config that hashes to the ID
/// (a plan without it), or refuses a plan carrying one that does not.
#[test]
fn the_far_side_tags_only_what_the_pusher_proves_it_holds() {
    let e = need_env!();
    let held = format!("{}:1", unique("held-far"));
    let id = build_image(&e.peer, &held, fresh_seed(), 4096, "held\n");
    let layers: Vec<String> = serde_json::from_str(&docker(
        &e.peer,
        &["image", "inspect", "-f", "{{json .RootFS.Layers}}", &held],
    ))
    .unwrap();
    // A config listing the layers, but not the one that hashes to the ID.
    let forged = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": layers}}).to_string();
    for config in [None, Some(forged)] {
        let forging = config.is_some();
        let target = format!("{}:1", unique("stolen"));
        let hello = dos::protocol::handshake::Hello {
            role: dos::protocol::handshake::Role::Push,
            image: target.clone(),
            release: "test".into(),
            features: vec!["delta".into(), "heartbeat".into()],
            delta: Some(dos::protocol::handshake::DeltaPlan {
                image_id: id.clone(),
                diff_ids: layers.clone(),
                manifest: None,
                config,
            }),
        };
        let mut child = dos_command(&e.peer, &["pull", "--allow", "stolen-*", &target])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, &dos::protocol::handshake::encode(&hello)).unwrap();
        // The answer comes (the far side asks for the proof, or refuses);
        // then the pusher leaves without giving it.
        let mut stdout = child.stdout.take().unwrap();
        let mut buf = [0u8; 4096];
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0);
        if !forging {
            drop(stdin);
        }
        let (code, err) = finish(child, Duration::from_secs(30));
        eprintln!("{code:?} {err}");
        assert_ne!(code, Some(0), "{err}");
        if forging {
            assert!(
                err.contains("the config in the pusher's plan hashes to"),
                "{err}"
            );
        }
        assert_eq!(
            image_id(&e.peer, &target),
            None,
            "tagged without proof: {err}"
        );
    }
    docker(&e.peer, &["rmi", &held]);
}

/// A forced command refusing the command the key asked for still speaks
/// dos: the pusher reports a refusal (5), not a far side that isn't dos.
#[test]
fn a_refused_forced_command_reaches_the_pusher_as_a_refusal() {
    let e = need_env!();
    let image = format!("{}:1", unique("forced-refusal"));
    build_image(&e.local, &image, fresh_seed(), 1024, "x\n");
    // The key's forced command takes the image from SSH_ORIGINAL_COMMAND.
    let pull = format!(
        "env DOCKER_HOST={} dos pull --allow 'forced-refusal-*'",
        e.peer
    );
    let out = dos_env(
        &e.local,
        &["push", &image, "sh", "-c", &pull],
        // What sshd sets for a key whose forced command is `dos pull`: the
        // command the client asked for, which is not `dos pull IMAGE`.
        &[("SSH_ORIGINAL_COMMAND", "dos --verbose pull other:1")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_FAR_SIDE), "{err}");
    assert!(err.contains("the far side refused"), "{err}");
    assert!(err.contains("may only run `dos pull IMAGE`"), "{err}");
    assert!(!err.contains("the far side failed"), "{err}");
    assert_eq!(image_id(&e.peer, &image), None);
}

/// `dos push IMAGE sh -c 'echo $$ >PID; exec env … dos pull IMAGE'` to the
/// peer daemon, started: the far dos's pid lands in PID.
fn start_to_peer(e: &Env, args: &[&str], image: &str, pidfile: &std::path::Path) -> Child {
    let far = format!(
        "echo $$ >{}; exec env DOCKER_HOST={} DOS_SPOOL_FAST=0 dos pull {image}",
        pidfile.display(),
        e.peer
    );
    let mut all = vec!["push"];
    all.extend_from_slice(args);
    all.extend([image, "sh", "-c", &far]);
    dos_command(&e.local, &all)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn pid_in(file: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// A relay's tag for `repo` on the daemon, by one listing (a check cheap
/// enough to poll while a push is under way).
fn relay_tag_shown(host: &str, repo: &str) -> bool {
    docker(host, &["image", "ls", "--format", "{{.Repository}}"])
        .lines()
        .any(|r| r.starts_with("127.0.0.1:") && r.ends_with(&format!("/{repo}")))
}

/// The child's stderr, collected line by line as it comes.
fn collect_stderr(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut err = child.stderr.take().unwrap();
    let s = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            s.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    seen
}

/// Poll `cond` every few milliseconds (a transfer on this machine's
/// loopback moves tens of MB in 50 ms).
fn wait_closely(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGINT while the image is being pushed into the relay registry: exit
/// 130, and no relay name on either daemon.
#[test]
fn ctrl_c_on_the_registry_path_leaves_no_names() {
    let e = need_env!();
    let image = format!("{}:1", unique("interrupted-relay"));
    let id = build_image(&e.local, &image, fresh_seed(), 32 << 20, "x\n");
    let work = tempfile::tempdir().unwrap();
    let pidfile = work.path().join("far.pid");
    let repo = image.split(':').next().unwrap().to_string();
    let push = start_to_peer(e, &["--via", "registry"], &image, &pidfile);
    wait_closely(
        "the relay name on the local daemon",
        Duration::from_secs(60),
        || relay_tag_shown(&e.local, &repo),
    );
    assert!(signal(push.id(), "INT"));
    let (code, err) = finish(push, Duration::from_secs(30));
    assert_eq!(code, Some(EXIT_INTERRUPTED), "{err}");
    assert_eq!(
        loopback_names(&e.local, &repo),
        Vec::<String>::new(),
        "{err}"
    );
    wait_for("the far dos to exit", Duration::from_secs(30), || {
        !running(&format!("dos pull {image}"))
    });
    assert_eq!(loopback_names(&e.peer, &repo), Vec::<String>::new());
    assert_eq!(image_id(&e.peer, &image), None);
    let _ = id;
}

/// SIGTERM to the far dos while its daemon pulls through the relay: it
/// removes the relay's names before it exits; the pusher reports it.
#[test]
fn sigterm_on_the_far_side_of_the_relay_leaves_no_names() {
    let e = need_env!();
    let image = format!("{}:1", unique("terminated-relay"));
    build_image(&e.local, &image, fresh_seed(), 48 << 20, "x\n");
    let work = tempfile::tempdir().unwrap();
    let (pidfile, codefile) = (work.path().join("far.pid"), work.path().join("far.code"));
    let repo = image.split(':').next().unwrap().to_string();
    // The far dos runs under a shell that writes down its exit code.
    let far = format!(
        // (An asynchronous command's stdin is /dev/null unless redirected:
        // the protocol's stdin is handed over on fd 3.)
        "exec 3<&0; env DOCKER_HOST={} dos pull {image} <&3 3<&- & echo $! >{pid}; wait $!; echo $? >{code}",
        e.peer,
        pid = pidfile.display(),
        code = codefile.display()
    );
    let mut push = dos_command(
        &e.local,
        &["push", "--via", "registry", &image, "sh", "-c", &far],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let seen = collect_stderr(&mut push);
    // The far dos says when its daemon starts pulling; the pusher, frozen
    // then, serves nothing, so the pull can't end before the signal.
    wait_closely("the far daemon's pull", Duration::from_secs(60), || {
        seen.lock().unwrap().contains("through the relay")
    });
    assert!(signal(push.id(), "STOP"));
    let far = pid_in(&pidfile).unwrap();
    assert!(signal(far, "TERM"));
    wait_for("the far dos's exit code", Duration::from_secs(30), || {
        std::fs::read_to_string(&codefile).is_ok_and(|c| c.ends_with('\n'))
    });
    assert!(signal(push.id(), "CONT"));
    let (code, _) = finish(push, Duration::from_secs(30));
    let err = seen.lock().unwrap().clone();
    assert_eq!(
        std::fs::read_to_string(&codefile).unwrap().trim(),
        EXIT_INTERRUPTED.to_string(),
        "{err}"
    );
    assert_ne!(code, Some(0), "{err}");
    assert_eq!(
        loopback_names(&e.peer, &repo),
        Vec::<String>::new(),
        "{err}"
    );
    assert_eq!(image_id(&e.peer, &image), None);
}

/// SIGINT mid-delta: exit 130, nothing on the far daemon. Twice in a row,
/// the second signal while the first is being handled: still 130, at once.
#[test]
fn ctrl_c_on_the_delta_path_exits_130_and_loads_nothing() {
    let e = need_env!();
    let image = format!("{}:1", unique("interrupted-delta"));
    let id = build_image(&e.local, &image, fresh_seed(), 48 << 20, "x\n");
    let work = tempfile::tempdir().unwrap();
    let pidfile = work.path().join("far.pid");
    let spool = work.path().join("spool");
    for twice in [false, true] {
        let far = format!(
            "echo $$ >{}; exec env DOCKER_HOST={} DOS_SPOOL_FAST=0 DOS_SPOOL_DIR={} dos pull {image}",
            pidfile.display(),
            e.peer,
            spool.display()
        );
        let push = dos_command(&e.local, &["push", &image, "sh", "-c", &far])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_closely("the transfer to start", Duration::from_secs(60), || {
            files_in(&spool).iter().any(|(_, n)| *n > 0)
        });
        assert!(signal(push.id(), "INT"));
        if twice {
            assert!(signal(push.id(), "INT") || push_gone(&push));
        }
        let (code, err) = finish(push, Duration::from_secs(30));
        assert_eq!(code, Some(EXIT_INTERRUPTED), "{err}");
        std::fs::remove_file(&pidfile).unwrap();
        wait_for("the far dos to exit", Duration::from_secs(30), || {
            !running(&format!("dos pull {image}"))
        });
        let _ = std::fs::remove_dir_all(&spool);
        assert_eq!(image_id(&e.peer, &image), None);
        assert_eq!(image_id(&e.peer, &id), None);
    }
}

fn push_gone(c: &Child) -> bool {
    !std::path::Path::new(&format!("/proc/{}", c.id())).exists()
}

/// The transport killed mid-layer, twenty times: the pusher exits 4 every
/// time (a broken pipe met while sending is the lost link, not a failure
/// of its own), and the far side loads nothing. Every other round only the
/// way to the far side dies (the far dos is killed, the command's stdout
/// stays open two seconds longer): the sender's broken pipe comes first,
/// and still the end is the lost link.
#[test]
fn a_transport_killed_mid_layer_is_always_exit_4() {
    let e = need_env!();
    let image = format!("{}:1", unique("killed-often"));
    let id = build_image(&e.local, &image, fresh_seed(), 96 << 20, "x\n");
    let work = tempfile::tempdir().unwrap();
    let pidfile = work.path().join("far.pid");
    let spool = work.path().join("spool");
    for round in 0..20 {
        let pull = format!(
            "env DOCKER_HOST={} DOS_SPOOL_FAST=0 DOS_SPOOL_DIR={} dos pull {image}",
            e.peer,
            spool.display()
        );
        let far = if round % 2 == 0 {
            format!("echo $$ >{}; exec {pull}", pidfile.display())
        } else {
            // Only the far dos reads the pusher's bytes; the shell keeps
            // the way back open.
            format!(
                "exec 3<&0; {pull} <&3 3<&- & echo $! >{}; exec 0<&- 3<&-; wait; sleep 2",
                pidfile.display()
            )
        };
        let push = dos_command(&e.local, &["push", &image, "sh", "-c", &far])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Mid-layer: the far side has spooled some of it.
        wait_closely("the far side to spool", Duration::from_secs(60), || {
            files_in(&spool).iter().any(|(_, n)| *n > 0) && pid_in(&pidfile).is_some()
        });
        assert!(signal(push.id(), "STOP"));
        assert!(signal(pid_in(&pidfile).unwrap(), "KILL"));
        assert!(signal(push.id(), "CONT"));
        let (code, err) = finish(push, Duration::from_secs(30));
        assert_eq!(code, Some(EXIT_TRANSPORT), "round {round}: {err}");
        assert!(
            err.contains("the connection to the far side was lost"),
            "round {round}: {err}"
        );
        std::fs::remove_file(&pidfile).unwrap();
        // Each round starts from an empty spool, so each is caught mid-layer.
        let _ = std::fs::remove_dir_all(&spool);
    }
    assert_eq!(image_id(&e.peer, &id), None);
}
