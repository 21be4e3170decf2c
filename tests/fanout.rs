//! `dos push IMAGE --to H1 --to H2 …` with the binary that ships, against
//! the hosts behind one shared uplink (tests/harness/env.sh's f1…fN, each
//! with its own sshd and Docker daemon): each host gets what it lacks and
//! no more, a layer several lack is compressed once, and a host cut off
//! mid-run fails alone and is named.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use common::*;

/// The shipped dos pushing `image` with `args`, over the test hosts' ssh.
fn push(e: &Env, image: &str, args: &[&str]) -> Command {
    let mut all = vec!["push", image];
    all.extend_from_slice(args);
    let mut c = dos_command_of(&shipped_dos(), &e.local, &all);
    c.env("DOS_SSH", format!("ssh -F {}", e.ssh_config))
        .stdin(Stdio::null());
    c
}

/// Bytes through host `h`'s port on the bridge, both ways.
fn port_bytes(e: &Env, h: &FanHost) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", &e.fan_switch, "cat"])
        .arg(format!("/sys/class/net/{}/statistics/tx_bytes", h.port))
        .arg(format!("/sys/class/net/{}/statistics/rx_bytes", h.port))
        .output()
        .expect("reading a port's counters");
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse::<u64>().unwrap())
        .sum()
}

fn ip_in_switch(e: &Env, args: &[&str]) {
    let out = Command::new("ip")
        .args(["-n", &e.fan_switch])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", stderr(&out));
}

fn tc_in_switch(e: &Env, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &e.fan_switch, "tc"])
        .args(args)
        .output()
        .unwrap()
}

/// v1: a base layer (busybox and pseudo-random bytes); v2: v1 and a deps layer; v3: v2 and an
/// app layer; every layer but busybox pseudo-random (zstd can't shrink
/// it, so the bytes a host must receive are known). Returns the images'
/// names and v3's ID.
fn three_versions(e: &Env, repo: &str, sizes: [usize; 3]) -> ([String; 3], String) {
    let seed = fresh_seed();
    let names = [1, 2, 3].map(|v| format!("{repo}:{v}"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&e.busybox, dir.path().join("busybox")).unwrap();
    std::fs::create_dir_all(dir.path().join("root/bin")).unwrap();
    std::fs::copy(&e.busybox, dir.path().join("root/bin/busybox")).unwrap();
    // busybox in the base layer: a layer of its own would be shared with
    // the other tests' images, on hosts they pushed to.
    let steps = [
        "FROM scratch\nCOPY root/ /\n".to_string(),
        format!("FROM {}\nCOPY l.bin /deps.bin\n", names[0]),
        format!(
            "FROM {}\nCOPY l.bin /app.bin\nCMD [\"/bin/busybox\", \"wc\", \"-c\", \"/base.bin\", \"/deps.bin\", \"/app.bin\"]\n",
            names[1]
        ),
    ];
    for (i, step) in steps.iter().enumerate() {
        let at = if i == 0 { "root/base.bin" } else { "l.bin" };
        std::fs::write(
            dir.path().join(at),
            pseudo_random(seed + i as u64, sizes[i]),
        )
        .unwrap();
        std::fs::write(dir.path().join("Dockerfile"), step).unwrap();
        docker_build(&e.local, &names[i], dir.path());
    }
    let id = image_id(&e.local, &names[2]).unwrap();
    (names, id)
}

/// The figures of the summary's last line: "layers read and compressed
/// once: N (…) for M sends".
fn shared_figures(err: &str) -> (u64, u64) {
    let line = err
        .lines()
        .find(|l| l.contains("layers read and compressed once:"))
        .unwrap_or_else(|| panic!("no summary line in\n{err}"));
    let after = line.split("compressed once: ").nth(1).unwrap();
    let n = after.split(' ').next().unwrap().parse().unwrap();
    let m = after
        .split(" for ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (n, m)
}

#[test]
fn three_hosts_from_three_starting_states_each_get_what_they_lack() {
    let e = need_env!();
    let [f1, f2, f3] = &e.fan[..3] else {
        panic!("three fan hosts expected")
    };
    let (base, deps, app) = (6_000_000, 3_000_000, 1_000_000);
    let (v, id) = three_versions(e, &unique("fan3"), [base, deps, app]);
    // f1 is empty; f2 holds v1, f3 v2 (loaded there, not over the link).
    copy_image(&e.local, &f2.docker, &v[0]);
    copy_image(&e.local, &f3.docker, &v[1]);
    let before: Vec<u64> = [f1, f2, f3].iter().map(|h| port_bytes(e, h)).collect();
    let out = push(e, &v[2], &["--to", "f1,f2", "--to", "f3"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let sent: Vec<u64> = [f1, f2, f3]
        .iter()
        .zip(&before)
        .map(|(h, b)| port_bytes(e, h) - b)
        .collect();
    eprintln!("{err}\nbytes through each host's port: {sent:?}");
    for h in [f1, f2, f3] {
        // The same config, hence the same ID, on each far engine; and it runs.
        assert_eq!(
            image_id(&h.docker, &v[2]).as_deref(),
            Some(id.as_str()),
            "{}",
            h.alias
        );
    }
    let ran = run_container(&f1.docker, &v[2]);
    assert!(
        ran.contains(&base.to_string()) && ran.contains(&app.to_string()),
        "{ran}"
    );
    // What each lacked crossed its port, and hardly more: the layers are
    // incompressible, the rest is ssh, the protocol and tar headers.
    let busybox = std::fs::metadata(&e.busybox).unwrap().len();
    let slack = 300_000;
    let lacked = [base + deps + app, deps + app, app].map(|b| b as u64);
    for (k, (got, want)) in sent.iter().zip(lacked).enumerate() {
        let extra = if k == 0 { busybox } else { 0 };
        assert!(
            *got >= want && *got <= want + extra + slack,
            "f{}: {got} bytes crossed its port, it lacked {want} (+{extra})",
            k + 1
        );
    }
    // Three layers lacked somewhere (base, deps, app), six copies of them
    // sent: each read and compressed once.
    assert_eq!(shared_figures(&err), (3, 6), "{err}");
    for h in ["f1", "f2", "f3"] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(h) && l.contains("ok: sent")),
            "no table row for {h}:\n{err}"
        );
    }
}

#[test]
fn a_host_cut_off_mid_run_fails_alone_and_is_named() {
    let e = need_env!();
    let [f1, f2, f3] = &e.fan[..3] else {
        panic!("three fan hosts expected")
    };
    let image = format!("{}:1", unique("fan-cut"));
    let id = build_image(&e.local, &image, fresh_seed(), 12_000_000, "cut\n");
    // f3's port slow enough that its push is still under way when it is cut.
    let shaped = tc_in_switch(
        e,
        &[
            "qdisc", "replace", "dev", &f3.port, "root", "tbf", "rate", "4mbit", "burst", "32kb",
            "latency", "2s",
        ],
    );
    assert!(shaped.status.success(), "{}", stderr(&shaped));
    struct Restore<'a>(&'a Env, &'a str);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["-n", &self.0.fan_switch, "link", "set", self.1, "up"])
                .status();
            let _ = tc_in_switch(self.0, &["qdisc", "del", "dev", self.1, "root"]);
        }
    }
    let _restore = Restore(e, &f3.port);
    let mut child = push(e, &image, &["--to", "f1,f2,f3", "--idle-timeout", "5"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    let mut cut = false;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        // The plain progress lines name their host: cut f3 off once it is
        // sending.
        if !cut && line.contains("dos: f3: ") && line.contains("sending") {
            ip_in_switch(e, &["link", "set", &f3.port, "down"]);
            cut = true;
        }
        err.push_str(&line);
        err.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(cut, "f3 never started sending:\n{err}");
    assert_eq!(status.code(), Some(4), "{err}");
    assert!(err.contains("1 of 3 hosts failed: f3"), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("f3") && l.contains("FAILED")),
        "{err}"
    );
    for h in [f1, f2] {
        assert_eq!(
            image_id(&h.docker, &image).as_deref(),
            Some(id.as_str()),
            "{}",
            h.alias
        );
    }
    assert_eq!(image_id(&f3.docker, &image), None, "{err}");
}

/// On a terminal: one live line per host, redrawn in place, ending with
/// each host's result, then the table.
#[test]
fn a_terminal_shows_a_line_per_host() {
    let e = need_env!();
    let image = format!("{}:1", unique("fan-tty"));
    let id = build_image(&e.local, &image, fresh_seed(), 2_000_000, "tty\n");
    let (code, raw) = run_in_pty(&push(e, &image, &["--to", "f1,f2"]), "");
    assert_eq!(code, Some(0), "{raw}");
    for h in &e.fan[..2] {
        assert_eq!(image_id(&h.docker, &image).as_deref(), Some(id.as_str()));
    }
    assert!(raw.contains("\x1b["), "no terminal control in {raw:?}");
    let lines = screen_lines(&raw);
    for h in ["f1", "f2"] {
        // The display's last frame, then the table's row.
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{h}  done     sent "))),
            "no live line for {h}: {lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(h) && l.contains("ok: sent")),
            "no table row for {h}: {lines:#?}"
        );
    }
}
