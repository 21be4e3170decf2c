//! Faults, as figures: the transport killed at 10 %, 50 % and 90 % of a
//! transfer on both paths, a byte flipped at three places, the far disk
//! full, the local daemon restarted mid-push (read from its store, and by
//! `docker save`), and twenty pushes in a row
//! alternating interruptions and reruns. After each: no temporary name on
//! either daemon, no half image, no temp file, no process left, the spool
//! within its bound; after an interruption, on either path, the rerun
//! resends less than 15 % of what had already arrived. The table is
//! printed (`cargo test --test faults -- --nocapture`) and copied to the
//! README.
//!
//! The link is `tests/harness/pipe.py`: a relay at 40 MB/s (so that 10 %
//! of a transfer can be caught) that can also flip bytes; killing it is the
//! link dying.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The layer that crosses: random, so its tar is its size on the wire.
const LAYER: usize = 64 << 20;
const RATE: u64 = 40_000_000;
/// The far side's spool bound in these tests.
const SPOOL_MAX: u64 = 160 << 20;

struct Bed {
    work: tempfile::TempDir,
    far_tmp: PathBuf,
    spool: PathBuf,
    count: PathBuf,
    pidfile: PathBuf,
}

impl Bed {
    fn new() -> Bed {
        let work = tempfile::tempdir().unwrap();
        let far_tmp = work.path().join("far-tmp");
        std::fs::create_dir(&far_tmp).unwrap();
        Bed {
            far_tmp,
            spool: work.path().join("spool"),
            count: work.path().join("count"),
            pidfile: work.path().join("link.pid"),
            work,
        }
    }

    /// `dos push [FLAGS] IMAGE` through the pipe to `far_host`'s dos pull.
    fn start(&self, host: &str, far_host: &str, flags: &[&str], image: &str, pipe: &str) -> Child {
        self.start_with(&[], host, far_host, flags, image, pipe)
    }

    /// The same, with `vars` in the pusher's environment.
    fn start_with(
        &self,
        vars: &[(&str, &str)],
        host: &str,
        far_host: &str,
        flags: &[&str],
        image: &str,
        pipe: &str,
    ) -> Child {
        let _ = std::fs::remove_file(&self.count);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/pipe.py");
        let far = format!(
            "echo $$ >{pid}; exec python3 {script} {pipe} --count {count} -- env DOCKER_HOST={far_host} \
             TMPDIR={tmp} DOS_SPOOL_FAST=0 DOS_SPOOL_MAX={SPOOL_MAX} DOS_SPOOL_DIR={spool} dos pull {image}",
            pid = self.pidfile.display(),
            script = script.display(),
            count = self.count.display(),
            tmp = self.far_tmp.display(),
            spool = self.spool.display(),
        );
        let mut args = vec!["push"];
        args.extend_from_slice(flags);
        args.extend([image, "sh", "-c", &far]);
        dos_command(host, &args)
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn relayed(&self) -> u64 {
        std::fs::read_to_string(&self.count)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn spooled(&self) -> u64 {
        files_in(&self.spool).iter().map(|(_, n)| *n).sum()
    }

    fn kill_link(&self) {
        let pid: u32 = std::fs::read_to_string(&self.pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(signal(pid, "KILL"));
    }
}

/// What a failed run left behind, as a cell of the table ("nothing", or
/// what), after the far dos has exited.
fn left_behind(hosts: &[&str], image: &str, id: &str, bed: &Bed) -> String {
    wait_for("the far dos to exit", Duration::from_secs(30), || {
        !running(&format!("dos pull {image}"))
    });
    let repo = image.split(':').next().unwrap();
    let mut left = Vec::new();
    for h in hosts {
        let names = loopback_names(h, repo);
        if !names.is_empty() {
            left.push(format!("names {names:?} on {h}"));
        }
    }
    let far = hosts[hosts.len() - 1];
    if image_id(far, image).is_some() || image_id(far, id).is_some() {
        left.push("an image on the far daemon".into());
    }
    let ports = dos_listening();
    if !ports.is_empty() {
        left.push(format!("listening ports {ports:?}"));
    }
    if dos_running() {
        left.push("a dos process".into());
    }
    let tmp = files_in(&bed.far_tmp);
    if !tmp.is_empty() {
        left.push(format!("temp files {tmp:?}"));
    }
    if bed.spooled() > SPOOL_MAX {
        left.push(format!("a spool of {} bytes", bed.spooled()));
    }
    if left.is_empty() {
        "nothing".into()
    } else {
        left.join("; ")
    }
}

struct Row {
    fault: String,
    exit: Option<i32>,
    left: String,
    arrived: u64,
    rerun: Option<(u64, f64)>,
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| fault | exit | left behind | arrived before the fault | rerun sent | resent of what had arrived |\n|---|---|---|---:|---:|---:|\n",
    );
    for r in rows {
        let (sent, share) = match r.rerun {
            Some((s, share)) => (
                format!("{:.1} MB", s as f64 / 1e6),
                format!("{:.1} %", share * 100.0),
            ),
            None => ("—".into(), "—".into()),
        };
        t.push_str(&format!(
            "| {} | {} | {} | {:.1} MB | {sent} | {share} |\n",
            r.fault,
            r.exit.map_or("signal".into(), |c| c.to_string()),
            r.left,
            r.arrived as f64 / 1e6,
        ));
    }
    t
}

/// The bytes a whole push of `image` sends beyond its big layer (the
/// other layers, the plan, the config): pushed once to an empty far side,
/// which is emptied again.
fn besides_the_layer(host: &str, far_host: &str, flags: &[&str], image: &str, bed: &Bed) -> u64 {
    let push = bed.start(host, far_host, flags, image, "");
    let (code, err) = finish(push, Duration::from_secs(120));
    assert_eq!(code, Some(0), "a whole push of {image}: {err}");
    docker(far_host, &["rmi", image]);
    assert_eq!(bed.spooled(), 0, "the spool kept the loaded image");
    bytes_sent(&err).saturating_sub(LAYER as u64)
}

/// Rerun without faults; the bytes it sent and the share of `arrived` it
/// sent again (what it sent beyond what was still missing: the rest of the
/// layer and `besides` it).
#[allow(clippy::too_many_arguments)]
fn rerun(
    host: &str,
    far_host: &str,
    flags: &[&str],
    image: &str,
    id: &str,
    bed: &Bed,
    arrived: u64,
    besides: u64,
) -> (u64, f64) {
    let push = bed.start(host, far_host, flags, image, "");
    let (code, err) = finish(push, Duration::from_secs(120));
    assert_eq!(code, Some(0), "rerun of {image}: {err}");
    assert_eq!(image_id(far_host, image).as_deref(), Some(id), "{err}");
    let sent = bytes_sent(&err);
    let missing = (LAYER as u64).saturating_sub(arrived) + besides;
    let resent = sent.saturating_sub(missing);
    let share = if arrived == 0 {
        0.0
    } else {
        resent as f64 / arrived as f64
    };
    assert!(
        files_in(&bed.far_tmp).is_empty(),
        "temp files after the rerun"
    );
    (sent, share)
}

/// Push, kill the link once `at` of the layer has been relayed, check what
/// is left, rerun. The image is removed from the far daemon after.
#[allow(clippy::too_many_arguments)]
fn killed_at(
    e: &Env,
    bed: &Bed,
    path: &str,
    flags: &[&str],
    image: &str,
    id: &str,
    at: f64,
    besides: u64,
) -> Row {
    let threshold = (LAYER as f64 * at) as u64;
    // A spool of its own: what earlier faults left there (a failed run's
    // layers are kept, for the next) is not this one's to account for.
    let _ = std::fs::remove_dir_all(&bed.spool);
    let push = bed.start(&e.local, &e.peer, flags, image, &format!("--rate {RATE}"));
    let started = Instant::now();
    while bed.relayed() < threshold {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the transfer did not reach {at}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    bed.kill_link();
    let (code, err) = finish(push, Duration::from_secs(30));
    assert_eq!(code, Some(4), "{path} killed at {at}: {err}");
    let left = left_behind(&[&e.local, &e.peer], image, id, bed);
    assert_eq!(left, "nothing", "{path} killed at {at}: {err}");
    // What arrived is in the far side's spool: the layer's tar (delta), or
    // the blob the daemon was downloading (the relay keeps it).
    let arrived = bed.spooled();
    assert!(
        arrived + (8 << 20) >= threshold,
        "{path} killed at {at}: {arrived} bytes spooled of {threshold} relayed"
    );
    let (sent, share) = rerun(&e.local, &e.peer, flags, image, id, bed, arrived, besides);
    assert!(
        share < 0.15,
        "{path}: the rerun resent {:.1} % of the {arrived} bytes that had arrived",
        share * 100.0
    );
    // A good run leaves nothing in the spool.
    assert_eq!(
        bed.spooled(),
        0,
        "{path}: the spool kept the loaded image: {:?}",
        files_in(&bed.spool)
    );
    docker(&e.peer, &["rmi", image]);
    Row {
        fault: format!("{path}: link killed at {:.0} %", at * 100.0),
        exit: code,
        left,
        arrived,
        rerun: Some((sent, share)),
    }
}

#[test]
fn faults_as_figures() {
    let e = need_env!();
    let image = format!("{}:1", unique("faults"));
    let id = build_image(&e.local, &image, fresh_seed(), LAYER, "faults\n");
    let mut rows = Vec::new();
    let bed = Bed::new();
    let besides_delta = besides_the_layer(&e.local, &e.peer, &[], &image, &bed);
    let via_registry = ["--via", "registry"];
    let besides_registry = besides_the_layer(&e.local, &e.peer, &via_registry, &image, &bed);

    for at in [0.1, 0.5, 0.9] {
        rows.push(killed_at(
            e,
            &bed,
            "delta",
            &[],
            &image,
            &id,
            at,
            besides_delta,
        ));
    }
    for at in [0.1, 0.5, 0.9] {
        rows.push(killed_at(
            e,
            &bed,
            "registry",
            &via_registry,
            &image,
            &id,
            at,
            besides_registry,
        ));
    }

    // A byte flipped at three places along the stream.
    let layers: Vec<String> = serde_json::from_str(&docker(
        &e.local,
        &["image", "inspect", "-f", "{{json .RootFS.Layers}}", &image],
    ))
    .unwrap();
    // The big layer (busybox below it, the app above).
    let damaged = layers[1].trim_start_matches("sha256:").to_string();
    for at in [0.1, 0.5, 0.9] {
        let offset = (LAYER as f64 * at) as u64 + 4321;
        let push = bed.start(&e.local, &e.peer, &[], &image, &format!("--flip {offset}"));
        let (code, err) = finish(push, Duration::from_secs(60));
        assert_eq!(code, Some(5), "a byte flipped at {offset}: {err}");
        let left = left_behind(&[&e.local, &e.peer], &image, &id, &bed);
        assert_eq!(left, "nothing", "{err}");
        // A layer that failed its check is never kept (the intact layer
        // below it may be, for the next run).
        let spooled = files_in(&bed.spool);
        assert!(
            spooled.iter().all(|(name, _)| *name != damaged),
            "a damaged layer was kept in the spool: {spooled:?}"
        );
        rows.push(Row {
            fault: format!("a byte flipped at {:.0} % of the layer", at * 100.0),
            exit: code,
            left,
            arrived: offset,
            rerun: None,
        });
    }

    // The far disk full: a daemon whose data root is a 96 MiB tmpfs.
    {
        let big = format!("{}:1", unique("faults-full"));
        let big_id = build_image(&e.local, &big, fresh_seed(), 128 << 20, "full\n");
        let before = tmpfs_used(&e.tiny_root);
        let push = bed.start(&e.local, &e.tiny, &[], &big, "");
        let (code, err) = finish(push, Duration::from_secs(120));
        assert_eq!(code, Some(5), "far disk full: {err}");
        assert!(err.contains("no space left on device"), "{err}");
        let left = left_behind(&[&e.local, &e.tiny], &big, &big_id, &bed);
        assert_eq!(left, "nothing", "{err}");
        wait_for("the far disk to be freed", Duration::from_secs(30), || {
            tmpfs_used(&e.tiny_root) <= before + (1 << 20)
        });
        rows.push(Row {
            fault: "far disk full (96 MiB, a 128 MiB layer)".into(),
            exit: code,
            left,
            arrived: 0,
            rerun: None,
        });
        docker(&e.local, &["rmi", &big]);
    }

    // The local daemon restarted mid-push (its own daemon, no other test
    // uses it): the push fails or finishes, and never leaves anything. Once
    // with the layers read out of its store (as root), once through
    // `docker save` (as a user who can't read the store).
    for (how, vars) in [
        ("", &[][..]),
        (
            ", reading by docker save",
            &[("DOS_READ_STORE", "never")][..],
        ),
    ] {
        let rst = std::env::var("DOS_TEST_RESTARTABLE").expect("DOS_TEST_RESTARTABLE");
        let img = format!("{}:1", unique("faults-restart"));
        let img_id = build_image(&rst, &img, fresh_seed(), LAYER, "restart\n");
        let push = bed.start_with(vars, &rst, &e.peer, &[], &img, &format!("--rate {RATE}"));
        let started = Instant::now();
        while bed.relayed() < LAYER as u64 / 3 {
            assert!(started.elapsed() < Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(2));
        }
        let dir = std::env::var("DOS_TEST_DIR").unwrap();
        let env_sh = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/harness/env.sh");
        let restarted = std::process::Command::new(env_sh)
            .args(["restart", &dir, "rst"])
            .status()
            .unwrap();
        assert!(restarted.success());
        let (code, err) = finish(push, Duration::from_secs(120));
        // Done, or the local daemon lost (3).
        assert!(matches!(code, Some(0 | 3)), "restarted{how}: {err}");
        let arrived = bed.spooled();
        let (left, rerun_fig) = if code == Some(0) {
            // Read out of the daemon's store, the layer needs no daemon
            // once the transfer has begun.
            assert_eq!(
                image_id(&e.peer, &img).as_deref(),
                Some(img_id.as_str()),
                "{err}"
            );
            ("nothing".to_string(), None)
        } else {
            let left = left_behind(&[&rst, &e.peer], &img, &img_id, &bed);
            assert_eq!(left, "nothing", "{err}");
            let (sent, share) = rerun(
                &rst,
                &e.peer,
                &[],
                &img,
                &img_id,
                &bed,
                arrived,
                besides_delta,
            );
            assert!(
                share < 0.15,
                "restarted{how}: the rerun resent {:.1} % of the {arrived} bytes that had arrived",
                share * 100.0
            );
            (left, Some((sent, share)))
        };
        rows.push(Row {
            fault: format!("the local daemon restarted a third of the way{how}"),
            exit: code,
            left,
            arrived,
            rerun: rerun_fig,
        });
        docker(&e.peer, &["rmi", &img]);
        docker(&rst, &["rmi", &img]);
    }

    // Twenty pushes in a row: interrupted at 50 %, rerun, ten times.
    let (mut worst, mut sent, mut arrived) = (0.0f64, 0, 0);
    for _ in 0..10 {
        let r = killed_at(e, &bed, "delta", &[], &image, &id, 0.5, besides_delta);
        let (s, share) = r.rerun.unwrap();
        worst = worst.max(share);
        sent += s / 10;
        arrived += r.arrived / 10;
    }
    rows.push(Row {
        fault: "20 pushes: 10 × (killed at 50 %, rerun); mean, worst share".into(),
        exit: Some(4),
        left: "nothing, each time".into(),
        arrived,
        rerun: Some((sent, worst)),
    });
    assert!(bed.spooled() <= SPOOL_MAX);
    let t = table(&rows);
    eprintln!("{t}");
    std::fs::write(bed.work.path().join("faults.md"), &t).unwrap();
    docker(&e.local, &["rmi", &image]);
}
