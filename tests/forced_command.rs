//! A locked-down far side: an ssh key whose authorized_keys line forces
//! `dos pull --allow PATTERN` (with `restrict`), against the real sshd of
//! the test environment. Allowed images arrive; anything else, image or
//! command, is refused.

mod common;

use std::process::Command;

use common::*;

#[test]
fn a_forced_command_key_receives_allowed_images_and_nothing_else() {
    let e = need_env!();
    let allowed = format!("{}:1", unique("locked-app"));
    let denied = format!("{}:1", unique("other-app"));
    let key = LockedKey::install(e, "locked-app-*");
    let cfg = key.config();

    // An allowed image arrives.
    let id = build_image(&e.local, &allowed, fresh_seed(), 16 * 1024, "locked\n");
    let out = dos(
        &e.local,
        &[
            "push", &allowed, "ssh", "-F", &cfg, "remote", "dos", "pull", &allowed,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(image_id(&e.remote, &allowed).as_deref(), Some(id.as_str()));

    // Another image is refused by the far side, and not loaded.
    build_image(&e.local, &denied, 8, 1024, "denied\n");
    let out = dos(
        &e.local,
        &[
            "push", &denied, "ssh", "-F", &cfg, "remote", "dos", "pull", &denied,
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("not allowed"), "{}", stderr(&out));
    assert_eq!(image_id(&e.remote, &denied), None);

    // Any other command is refused without running.
    let marker = format!("/tmp/{}", unique("forced-marker"));
    for cmd in [
        format!("touch {marker}"),
        format!("dos pull {allowed} && touch {marker}"),
        "dos push x:1 sh".to_string(),
    ] {
        let out = Command::new("ssh")
            .args(["-F", &cfg, "remote", &cmd])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cmd} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("refused"), "{cmd}: {err}");
        assert!(!std::path::Path::new(&marker).exists(), "{cmd} ran");
    }
    // `restrict`: no port forwarding through this key either.
    let out = Command::new("ssh")
        .args([
            "-F",
            &cfg,
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "0:127.0.0.1:22",
            "remote",
            "dos",
            "pull",
            &allowed,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a forwarding was allowed");
}
