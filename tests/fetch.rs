//! `dos fetch`: the other direction. The far host's engine holds the image;
//! `dos fetch` here runs `dos send` there over real ssh and receives only
//! what the local engine lacks. Checked on the local engine itself: the
//! image ID, the container's output, the bytes on the link; and with a
//! read-only forced-command key, what it may take and that it can't push.

mod common;

use common::*;

/// `dos fetch ARGS…` into the engine at `local`, over the test hosts' ssh
/// (`cfg`, for `--from`).
fn fetch(local: &str, cfg: &str, args: &[&str]) -> std::process::Output {
    let ssh = format!("ssh -F {cfg}");
    let mut all = vec!["fetch"];
    all.extend_from_slice(args);
    let out = dos_env(local, &all, &[("DOS_SSH", &ssh)]);
    eprintln!("dos {all:?}:\n{}", stderr(&out));
    out
}

#[test]
fn fetch_cold_then_an_update_then_the_same_image() {
    let e = need_env!();
    let _link = link_to_myself();
    let image = format!("{}:1", unique("fetched-app"));
    let repo = image.split(':').next().unwrap().to_string();
    let seed = fresh_seed();
    let v1 = build_image(&e.remote, &image, seed, 4 * 1024 * 1024, "fetched 1\n");
    let over_link = |args: &[&str]| {
        let before = link_bytes(e);
        let out = fetch(&e.local, &e.ssh_config, args);
        assert!(out.status.success(), "{}", stderr(&out));
        (link_bytes(e) - before, stderr(&out))
    };

    // Cold: the whole image crosses, and runs here.
    let (cold, err) = over_link(&[&image, "--from", "remote"]);
    assert_eq!(image_id(&e.local, &image).as_deref(), Some(v1.as_str()));
    assert_eq!(run_container(&e.local, &image), "fetched 1");
    assert!(
        cold > 4 * 1024 * 1024,
        "the cold fetch moved only {cold} bytes"
    );
    assert!(
        err.contains(&format!("{image} from remote: received")),
        "{err}"
    );

    // An update: only the new top layer.
    let v2 = build_image(&e.remote, &image, seed, 4 * 1024 * 1024, "fetched 2\n");
    assert_ne!(v1, v2);
    let (update, err) = over_link(&[&image, "--from", "remote"]);
    assert_eq!(image_id(&e.local, &image).as_deref(), Some(v2.as_str()));
    assert_eq!(run_container(&e.local, &image), "fetched 2");
    assert!(err.contains("2 of 3 layers were here"), "{err}");
    assert!(
        update * 10 < cold,
        "the update moved {update} bytes, not far fewer than the cold {cold}"
    );

    // The same image again, through the command form: hardly anything.
    let send = format!("dos send {image}");
    let (same, err) = over_link(&[&image, "ssh", "-F", &e.ssh_config, "remote", &send]);
    assert!(err.contains("(it was here)"), "{err}");
    assert!(same < 64 * 1024, "the same image moved {same} bytes");
    eprintln!("link bytes: cold {cold}, update {update}, same {same}");
    assert_clean(&e.local, &repo);
    assert_clean(&e.remote, &repo);
}

/// Between two containerd image stores the blobs cross as they are: the
/// image gets the same ID (its manifest digest) here as there.
#[test]
fn fetch_between_containerd_stores_keeps_the_image_id() {
    let e = need_env!();
    let _link = link_to_myself();
    let image = format!("{}:1", unique("fetched-c"));
    let id = build_image(
        &e.c_remote,
        &image,
        fresh_seed(),
        1024 * 1024,
        "containerd\n",
    );
    let send = format!("env DOCKER_HOST={} dos send {image}", e.c_remote);
    let out = fetch(
        &e.c_local,
        &e.ssh_config,
        &[&image, "ssh", "-F", &e.ssh_config, "remote", &send],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(image_id(&e.c_local, &image).as_deref(), Some(id.as_str()));
    assert_eq!(run_container(&e.c_local, &image), "containerd");
}

/// A key locked to `dos send --allow PATTERN` is read-only: it takes the
/// allowed images, no other, and can't push; a key locked to `dos pull`
/// can't fetch.
#[test]
fn a_read_only_key_fetches_the_allowed_image_and_nothing_else() {
    let e = need_env!();
    let _link = link_to_myself();
    let allowed = format!("{}:1", unique("ro-app"));
    let denied = format!("{}:1", unique("ro-other"));
    let key = LockedKey::forcing(e, "dos send --allow 'ro-app-*'");
    let cfg = key.config();
    let id = build_image(&e.remote, &allowed, fresh_seed(), 16 * 1024, "ro\n");
    build_image(&e.remote, &denied, fresh_seed(), 16 * 1024, "denied\n");

    let out = fetch(&e.local, &cfg, &[&allowed, "--from", "remote"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(image_id(&e.local, &allowed).as_deref(), Some(id.as_str()));

    let out = fetch(&e.local, &cfg, &[&denied, "--from", "remote"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("may not be taken from here"),
        "{}",
        stderr(&out)
    );
    assert_eq!(image_id(&e.local, &denied), None);

    // Pushing through it: refused, nothing arrives there.
    let pushed = format!("{}:1", unique("ro-app-pushed"));
    build_image(&e.local, &pushed, fresh_seed(), 16 * 1024, "pushed\n");
    let out = dos(
        &e.local,
        &[
            "push", &pushed, "ssh", "-F", &cfg, "remote", "dos", "pull", &pushed,
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("dos send, not a dos pull"),
        "{}",
        stderr(&out)
    );
    assert_eq!(image_id(&e.remote, &pushed), None);

    // A key that may only receive pushes can't be fetched through, and
    // says so at once (not after the hello timeout).
    let pull_only = LockedKey::install(e, "*");
    let started = std::time::Instant::now();
    let out = fetch(
        &e.local,
        &pull_only.config(),
        &[&allowed, "--from", "remote", "--hello-timeout", "50"],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("dos pull"), "{}", stderr(&out));
    assert!(
        started.elapsed().as_secs() < 40,
        "it waited for the hello timeout"
    );
}

/// A fetch of an image the far engine doesn't have fails with the far
/// side's word, and leaves nothing here.
#[test]
fn fetching_a_missing_image_names_it() {
    let e = need_env!();
    let _link = link_to_myself();
    let image = format!("{}:1", unique("not-there"));
    let out = fetch(&e.local, &e.ssh_config, &[&image, "--from", "remote"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains(&image), "{}", stderr(&out));
    assert_eq!(image_id(&e.local, &image), None);
}
