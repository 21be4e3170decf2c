//! Errors a user can act on: each names what went wrong, exits non-zero
//! with the documented code, and leaves nothing behind.

mod common;

use common::*;

const EXIT_LOCAL_DOCKER: i32 = 3;
const EXIT_TRANSPORT: i32 = 4;
const EXIT_FAR_SIDE: i32 = 5;

#[test]
fn image_not_found_never_starts_the_command() {
    let e = need_env!();
    let wire = Tripwire::new();
    let image = unique("no-such-image");
    let out = dos(&e.local, &["push", &image, wire.command()]);
    assert_eq!(
        out.status.code(),
        Some(EXIT_LOCAL_DOCKER),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains(&image), "{}", stderr(&out));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    assert!(!wire.fired(), "the transport command was started");
}

#[test]
fn unreachable_daemon_names_docker_host() {
    // Needs no daemon: that is the point.
    let dir = tempfile::tempdir().unwrap();
    let host = format!("unix://{}/nothing.sock", dir.path().display());
    let out = dos(&host, &["push", "app:1", "true"]);
    assert_eq!(
        out.status.code(),
        Some(EXIT_LOCAL_DOCKER),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains(&host), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("dos: error"), "{}", stderr(&out));
}

fn with_image(e: &Env, name: &str) -> String {
    let image = format!("{}:1", unique(name));
    build_image(&e.local, &image, 7, 1024, "x\n");
    image
}

#[test]
fn command_not_found() {
    let e = need_env!();
    let image = with_image(e, "cmd-missing");
    let out = dos(&e.local, &["push", &image, "/nonexistent/transport"]);
    assert_eq!(out.status.code(), Some(EXIT_TRANSPORT), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/nonexistent/transport"),
        "{}",
        stderr(&out)
    );
    assert!(loopback_names(&e.local, image.split(':').next().unwrap()).is_empty());
}

#[test]
fn command_exiting_early() {
    let e = need_env!();
    let image = with_image(e, "cmd-early");
    let out = dos(&e.local, &["push", &image, "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(EXIT_TRANSPORT), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exited with status 3"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn far_side_without_dos_shows_what_it_printed() {
    let e = need_env!();
    let image = with_image(e, "not-dos");
    let far = "echo 'Welcome to prod'; echo 'bash: dos: command not found' >&2; exit 127";
    let out = dos(&e.local, &["push", &image, "sh", "-c", far]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_TRANSPORT), "{err}");
    // A shell's 127: the command (dos) is not there.
    assert!(err.contains("the far side has no dos"), "{err}");
    assert!(err.contains("status 127"), "{err}");
    // Both what it said on stdout and on stderr end up in the error.
    let error_part = &err[err.find("dos: error").unwrap()..];
    assert!(error_part.contains("bash: dos: command not found"), "{err}");
    assert!(error_part.contains("Welcome to prod"), "{err}");
}

#[test]
fn protocol_version_mismatch_names_both_versions() {
    let e = need_env!();
    let image = with_image(e, "version");
    // A far side speaking protocol version 99 with an empty JSON hello.
    let far = r#"printf '\211DOS\r\n\032\n\000\143\000\000\000\002{}'; cat >/dev/null"#;
    let out = dos(&e.local, &["push", &image, "sh", "-c", far]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_TRANSPORT), "{err}");
    assert!(
        err.contains(&format!("version {}", dos::protocol::handshake::VERSION))
            && err.contains("version 99"),
        "{err}"
    );
}

#[test]
fn image_mismatch_is_refused_naming_both() {
    let e = need_env!();
    let image = with_image(e, "offered");
    let pull = format!("DOCKER_HOST={} dos pull other:1", e.peer);
    let out = dos(&e.local, &["push", &image, "sh", "-c", &pull]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_FAR_SIDE), "{err}");
    assert!(err.contains(&image) && err.contains("other:1"), "{err}");
    assert_eq!(image_id(&e.peer, "other:1"), None);
}

/// The far daemon lives on another host (its own loopback), so its docker
/// pull through dos's loopback relay fails: the daemon's own message must
/// reach the pushing user. (The delta path has no such limit; see
/// transfer.rs.)
#[test]
fn far_docker_pull_failure_is_relayed() {
    let e = need_env!();
    let image = with_image(e, "pull-fails");
    let pull = format!("DOCKER_HOST={} dos pull {image}", e.remote);
    let out = dos(
        &e.local,
        &["push", "--via", "registry", &image, "sh", "-c", &pull],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_FAR_SIDE), "{err}");
    let error_part = &err[err.find("dos: error").unwrap()..];
    assert!(error_part.contains("docker pull"), "{err}");
    assert!(error_part.contains("connection refused"), "{err}");
    assert_eq!(image_id(&e.remote, &image), None);
    assert!(loopback_names(&e.remote, image.split(':').next().unwrap()).is_empty());
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = dos("unix:///nonexistent", &["push", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn invalid_references_are_usage_errors_and_start_nothing() {
    let wire = Tripwire::new();
    // Checked before the daemon is asked: needs no environment.
    for bad in ["App:1", "app:", "app::1", "a b", "app@sha256:123", ""] {
        let out = dos("unix:///nonexistent", &["push", bad, wire.command()]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("invalid image reference"),
            "{bad:?}: {}",
            stderr(&out)
        );
    }
    assert!(!wire.fired(), "the transport command was started");
}

#[test]
fn an_invalid_reference_on_the_far_side_is_shown_to_the_pusher() {
    let e = need_env!();
    let image = with_image(e, "far-bad-ref");
    let pull = format!("DOCKER_HOST={} dos pull 'Not/Valid:1'", e.peer);
    let out = dos(&e.local, &["push", &image, "sh", "-c", &pull]);
    assert_eq!(out.status.code(), Some(EXIT_TRANSPORT), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("invalid image reference \"Not/Valid:1\""),
        "{}",
        stderr(&out)
    );
}
