//! The capture registry end to end: the local daemon learns the image's
//! layers during a first push, then an update is read out of it by
//! `docker push` (only the new layer), not by `docker save`.

mod common;

use std::net::TcpListener;
use std::path::Path;

use common::*;

fn push(e: &Env, image: &str, port: u16, cache: &Path) -> (String, u64) {
    let pull = format!("dos pull {image}");
    let port = port.to_string();
    let out = dos_env(
        &e.local,
        &["push", image, "ssh", "-F", &e.ssh_config, "remote", &pull],
        &[
            ("DOS_CAPTURE_PORT", port.as_str()),
            ("XDG_CACHE_HOME", cache.to_str().unwrap()),
            ("DOS_CAPTURE_SEED", "always"),
            // As root on the daemon's machine dos reads its store instead.
            ("DOS_READ_STORE", "never"),
        ],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "dos push failed: {err}");
    let sent = bytes_sent(&err);
    (err, sent)
}

fn layers(host: &str, image: &str) -> Vec<String> {
    let json = docker(
        host,
        &["image", "inspect", "-f", "{{json .RootFS.Layers}}", image],
    );
    serde_json::from_str(&json).unwrap()
}

#[test]
fn an_update_is_read_through_the_capture_registry() {
    let e = need_env!();
    let image = format!("{}:1", unique("capture"));
    let repo = image.split(':').next().unwrap().to_string();
    let seed = fresh_seed();
    let v1 = build_image(&e.local, &image, seed, 4 * 1024 * 1024, "version 1\n");
    let cache = tempfile::tempdir().unwrap();
    let port = free_port();

    // Nothing known yet: docker save, while the daemon is taught the image.
    let (err, first) = push(e, &image, port, cache.path());
    assert!(err.contains("read by docker save"), "{err}");
    assert_eq!(image_id(&e.remote, &image).as_deref(), Some(v1.as_str()));
    let dir = cache.path().join("dos/capture");
    let files = files_in(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let record = std::fs::read_to_string(dir.join(&files[0].0)).unwrap();
    assert!(files[0].0.ends_with(&format!("-{port}")), "{files:?}");
    for l in layers(&e.local, &image) {
        assert!(record.contains(&l), "layer {l} not learned: {record}");
    }

    // Only the app layer changes: the daemon's push hands over just that.
    let v2 = build_image(&e.local, &image, seed, 4 * 1024 * 1024, "version 2\n");
    let (err, second) = push(e, &image, port, cache.path());
    assert!(
        err.contains("read by docker push to the capture registry"),
        "{err}"
    );
    assert_eq!(image_id(&e.remote, &image).as_deref(), Some(v2.as_str()));
    assert_eq!(run_container(&e.remote, &image), "version 2");
    eprintln!("sent: first {first} bytes, update {second}");
    assert!(first > 4 * 1024 * 1024, "first push sent {first} bytes");
    assert!(second < 64 * 1024, "the update sent {second} bytes: {err}");

    // No name left behind: neither the image's nor the capture registry's.
    assert!(loopback_names(&e.local, &repo).is_empty());
    let left = names_under(&e.local, &format!("127.0.0.1:{port}"), "dos-capture");
    assert!(left.is_empty(), "capture names left: {left:?}");
}

/// Another process holding the port (say a second dos push): this push
/// reads the image with docker save, and works.
#[test]
fn a_busy_capture_port_falls_back_to_docker_save() {
    let e = need_env!();
    let image = format!("{}:1", unique("capture-busy"));
    let id = build_image(&e.local, &image, fresh_seed(), 64 * 1024, "busy\n");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cache = tempfile::tempdir().unwrap();
    let (err, _) = push(e, &image, port, cache.path());
    assert!(err.contains("read by docker save"), "{err}");
    assert_eq!(image_id(&e.remote, &image).as_deref(), Some(id.as_str()));
    assert!(files_in(&cache.path().join("dos/capture")).is_empty());
}

/// The second host's daemon, driven through its socket from here, runs in
/// another network namespace: its 127.0.0.1 is not ours, so its push into
/// the capture registry fails. The transfer goes on with docker save.
#[test]
fn a_daemon_that_cannot_reach_the_capture_registry_falls_back_to_docker_save() {
    let e = need_env!();
    let image = format!("{}:1", unique("capture-far"));
    // Small enough that the capture path is tried even for a first push.
    let id = build_image(&e.remote, &image, fresh_seed(), 1024, "fallback\n");
    let cache = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let pull = format!("DOCKER_HOST={} dos pull {image}", e.peer);
    let out = dos_env(
        &e.remote,
        &["push", &image, "sh", "-c", &pull],
        &[
            ("DOS_CAPTURE_PORT", port.as_str()),
            ("XDG_CACHE_HOME", cache.path().to_str().unwrap()),
            ("DOS_READ_STORE", "never"),
        ],
    );
    let err = stderr(&out);
    assert!(out.status.success(), "dos push failed: {err}");
    assert!(
        err.contains("read by docker push to the capture registry, then docker save"),
        "{err}"
    );
    assert_eq!(image_id(&e.peer, &image).as_deref(), Some(id.as_str()));
    assert_eq!(run_container(&e.peer, &image), "fallback");
    let left = names_under(&e.remote, &format!("127.0.0.1:{port}"), "dos-capture");
    assert!(left.is_empty(), "capture names left: {left:?}");
}
