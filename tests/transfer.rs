//! End to end: the real dos binary moves real images between real Docker
//! daemons, over `sh -c` and over ssh to a second host.

mod common;

use common::*;

fn assert_clean(host: &str, repo: &str) {
    let left = loopback_names(host, repo);
    assert!(left.is_empty(), "temporary names left on {host}: {left:?}");
}

#[test]
fn push_over_sh_to_a_second_daemon() {
    let e = need_env!();
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
    let image = format!("{}:1", unique("ssh-app"));
    let repo = image.split(':').next().unwrap().to_string();
    let v1 = build_image(&e.local, &image, 3, 4 * 1024 * 1024, "version 1\n");

    let ssh = |img: &str| {
        let before = link_bytes(e);
        let out = dos(
            &e.local,
            &[
                "push",
                img,
                "ssh",
                "-F",
                &e.ssh_config,
                "remote",
                &format!("dos pull {img}"),
            ],
        );
        assert!(
            out.status.success(),
            "dos push over ssh failed: {}",
            stderr(&out)
        );
        link_bytes(e) - before
    };

    let first = ssh(&image);
    assert_eq!(image_id(&e.remote, &image).as_deref(), Some(v1.as_str()));
    assert_eq!(run_container(&e.remote, &image), "version 1");
    assert!(
        first > 4 * 1024 * 1024,
        "the first transfer moved only {first} bytes"
    );

    let v2 = build_image(&e.local, &image, 3, 4 * 1024 * 1024, "version 2\n");
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
