//! End to end: the real dos binary moves real images between real Docker
//! daemons, over `sh -c` and over ssh to a second host.

mod common;

use common::*;

/// `dos push [flags] IMAGE ssh remote dos pull IMAGE`, which must succeed.
fn push_over_ssh(e: &Env, flags: &[&str], image: &str) -> std::process::Output {
    let pull = format!("dos pull {image}");
    let mut args = vec!["push"];
    args.extend_from_slice(flags);
    args.extend([image, "ssh", "-F", &e.ssh_config, "remote", &pull]);
    let out = dos(&e.local, &args);
    assert!(
        out.status.success(),
        "dos push {flags:?} over ssh failed: {}",
        stderr(&out)
    );
    out
}

#[test]
fn push_over_sh_to_a_second_daemon() {
    let e = need_env!();
    let _link = link_to_myself();
    let image = format!("{}:1", unique("sh-app"));
    let repo = image.split(':').next().unwrap().to_string();
    let id = build_image(&e.local, &image, 1, 256 * 1024, "hello over sh\n");

    let pull = format!("DOCKER_HOST={} dos pull {image}", e.peer);
    let out = dos(&e.local, &["push", &image, "sh", "-c", &pull]);
    assert!(out.status.success(), "dos push failed: {}", stderr(&out));

    assert_eq!(image_id(&e.peer, &image).as_deref(), Some(id.as_str()));
    assert_eq!(run_container(&e.peer, &image), "hello over sh");
    assert_clean(&e.local, &repo);
    assert_clean(&e.peer, &repo);
    // The source keeps its own name.
    assert_eq!(image_id(&e.local, &image).as_deref(), Some(id.as_str()));
}

#[test]
fn double_dash_before_the_command_is_accepted() {
    let e = need_env!();
    let _link = link_to_myself();
    let image = format!("{}:2", unique("dashdash"));
    let id = build_image(&e.local, &image, 2, 1024, "dash\n");
    let pull = format!("DOCKER_HOST={} dos pull {image}", e.peer);
    let out = dos(&e.local, &["push", &image, "--", "sh", "-c", &pull]);
    assert!(out.status.success(), "dos push failed: {}", stderr(&out));
    assert_eq!(image_id(&e.peer, &image).as_deref(), Some(id.as_str()));
}

/// Over a real sshd on a second host (its own network namespace and
/// loopback). The second push changes only the top layer: what crosses the
/// link must be a small fraction of the first transfer.
#[test]
fn push_over_ssh_then_an_update_moves_far_fewer_bytes() {
    let e = need_env!();
    let _link = link_to_myself();
    let image = format!("{}:1", unique("ssh-app"));
    let repo = image.split(':').next().unwrap().to_string();
    let seed = fresh_seed();
    let v1 = build_image(&e.local, &image, seed, 4 * 1024 * 1024, "version 1\n");

    // The tests run as root beside the daemons: the layers come straight
    // out of the local daemon's store.
    let ssh = |img: &str| {
        let before = link_bytes(e);
        let err = stderr(&push_over_ssh(e, &[], img));
        assert!(err.contains("read by the daemon's layer store;"), "{err}");
        link_bytes(e) - before
    };

    let first = ssh(&image);
    assert_eq!(image_id(&e.remote, &image).as_deref(), Some(v1.as_str()));
    assert_eq!(run_container(&e.remote, &image), "version 1");
    assert!(
        first > 4 * 1024 * 1024,
        "the first transfer moved only {first} bytes"
    );

    let v2 = build_image(&e.local, &image, seed, 4 * 1024 * 1024, "version 2\n");
    assert_ne!(v1, v2);
    let second = ssh(&image);
    assert_eq!(image_id(&e.remote, &image).as_deref(), Some(v2.as_str()));
    assert_eq!(run_container(&e.remote, &image), "version 2");
    eprintln!("link bytes: first transfer {first}, update {second}");
    assert!(
        second * 10 < first,
        "the update moved {second} bytes, not far fewer than the first {first}"
    );
    assert_clean(&e.local, &repo);
    assert_clean(&e.remote, &repo);
}

/// The registry relay end to end over real ssh: the far daemon pulls through
/// dos pull's loopback relay, which reaches this side's embedded registry.
#[test]
fn push_via_registry_relay_over_ssh() {
    let e = need_env!();
    let _link = link_to_myself();
    let image = format!("{}:1", unique("relay-app"));
    let repo = image.split(':').next().unwrap().to_string();
    let id = build_image(
        &e.local,
        &image,
        fresh_seed(),
        128 * 1024,
        "via the relay\n",
    );
    let out = push_over_ssh(e, &["--via", "registry"], &image);
    assert!(stderr(&out).contains("via registry"), "{}", stderr(&out));
    assert_eq!(image_id(&e.remote, &image).as_deref(), Some(id.as_str()));
    assert_eq!(run_container(&e.remote, &image), "via the relay");
    assert_clean(&e.local, &repo);
    assert_clean(&e.remote, &repo);
}

/// The far side got the base some other way (docker load): the delta path
/// still sends only the layers above it, which a registry pull can't.
#[test]
fn delta_sends_only_what_a_foreign_base_lacks() {
    let e = need_env!();
    let _link = link_to_myself();
    let seed = fresh_seed();
    let image = format!("{}:1", unique("foreign"));
    let id = build_image(
        &e.local,
        &image,
        seed,
        3 * 1024 * 1024,
        "on a foreign base\n",
    );
    // Hand the far daemon the whole image by docker save | docker load, then
    // remove it: its layers stay only as the chain of a differently built
    // image with the same base.
    let base = format!("{}:base", unique("foreign"));
    build_image(&e.local, &base, seed, 3 * 1024 * 1024, "other app\n");
    copy_image(&e.local, &e.peer, &base);
    let pull = format!("DOCKER_HOST={} dos pull {image}", e.peer);
    let out = dos(&e.local, &["push", &image, "sh", "-c", &pull]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("via delta"), "{err}");
    assert!(err.contains("the far side has 2 of 3 layers"), "{err}");
    assert_eq!(image_id(&e.peer, &image).as_deref(), Some(id.as_str()));
    assert_eq!(run_container(&e.peer, &image), "on a foreign base");
    // Sent: the small app layer and the config, not the 3 MiB base.
    let sent = bytes_sent(&err);
    assert!(
        sent < 256 * 1024,
        "sent {sent} bytes for a one-layer delta: {err}"
    );

    // Pushed again: the far side has the image, almost nothing moves.
    let out = dos(&e.local, &["push", &image, "sh", "-c", &pull]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("and the image"), "{err}");
}
