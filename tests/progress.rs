//! What a person sees of a push: the live display on a real terminal (a
//! pty), timestamped lines when stderr is a pipe, only the summary with
//! --quiet; the far side's stderr on lines of its own either way.

mod common;

use common::*;

/// A push over real ssh whose far side says something on stderr first.
fn push(e: &Env, image: &str, extra: &[&str]) -> std::process::Command {
    let far = format!("echo far-side-note >&2; dos pull {image}");
    let mut args = vec!["push", image];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["ssh", "-F", &e.ssh_config, "remote", &far]);
    dos_command(&e.local, &args)
}

fn layer_lines<'a>(lines: &'a [String], ids: &[String]) -> Vec<&'a String> {
    lines
        .iter()
        .filter(|l| ids.iter().any(|d| l.starts_with(&d[..19])))
        .collect()
}

fn diff_ids(host: &str, image: &str) -> Vec<String> {
    docker(
        host,
        &["image", "inspect", "-f", "{{json .RootFS.Layers}}", image],
    )
    .trim_matches(|c| c == '[' || c == ']')
    .split(',')
    .map(|d| d.trim_matches('"').to_string())
    .collect()
}

#[test]
fn on_a_terminal_each_layer_has_a_line_and_the_far_side_prints_above() {
    let e = need_env!();
    let base = format!("{}:1", unique("progress-tty"));
    let image = format!("{}:2", base.trim_end_matches(":1"));
    // The far side has the base's layers; the new app layer is sent.
    let seed = fresh_seed();
    build_image(&e.local, &base, seed, 4 << 20, "one\n");
    copy_image(&e.local, &e.remote, &base);
    let id = build_image(&e.local, &image, seed, 4 << 20, "two\n");
    let ids = diff_ids(&e.local, &image);
    let (code, raw) = run_in_pty(&push(e, &image, &[]), "");
    assert_eq!(code, Some(0), "{raw}");
    assert_eq!(image_id(&e.remote, &image).as_deref(), Some(id.as_str()));
    // Redrawn in place: cursor movement and line clearing.
    assert!(raw.contains("\x1b["), "no terminal control in {raw:?}");
    let lines = screen_lines(&raw);
    // The far side's line is whole, on a line of its own.
    assert!(lines.iter().any(|l| l == "far-side-note"), "{lines:#?}");
    // The last frame: every layer with its state, then the total.
    let rows = layer_lines(&lines, &ids);
    let last: Vec<&&String> = rows.iter().rev().take(ids.len()).collect();
    let state = |l: &str| l.split_whitespace().nth(1).map(str::to_string);
    let present = last
        .iter()
        .filter(|l| state(l).as_deref() == Some("present"))
        .count();
    let done = last
        .iter()
        .filter(|l| state(l).as_deref() == Some("done"))
        .count();
    assert_eq!((present, done), (ids.len() - 1, 1), "{lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with("total ")), "{lines:#?}");
    let summary = lines.iter().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        summary.starts_with(&format!("{image} on the far side: sent "))
            && summary.contains(&format!(
                "({} of {} layers were there)",
                ids.len() - 1,
                ids.len()
            )),
        "{summary}"
    );
}

#[test]
fn without_a_terminal_progress_is_timestamped_lines() {
    let e = need_env!();
    let image = format!("{}:1", unique("progress-plain"));
    build_image(&e.local, &image, fresh_seed(), 1 << 20, "plain\n");
    let ids = diff_ids(&e.local, &image);
    let out = push(e, &image, &[]).output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains('\x1b'), "terminal control in a pipe: {err:?}");
    assert!(err.lines().any(|l| l == "far-side-note"), "{err}");
    let stamped = |l: &str| {
        let b = l.as_bytes();
        b.len() > 14
            && b[2] == b':'
            && b[5] == b':'
            && l[..8].chars().filter(char::is_ascii_digit).count() == 6
            && l[8..].starts_with(" dos: ")
    };
    // The far side holds busybox's layer (every test image starts with
    // it); the other two are this image's own.
    let told = |l: &str| {
        l.ends_with(&format!(
            "of {} layers are there; sending the rest",
            ids.len()
        ))
    };
    assert!(err.lines().any(|l| stamped(l) && told(l)), "{err}");
    for d in &ids[1..] {
        for state in ["sending", "verified"] {
            let found = err.lines().any(|l| {
                stamped(l)
                    && l[14..].starts_with(&d[..19])
                    && l[14..].split_whitespace().nth(1) == Some(state)
            });
            assert!(found, "no {state} line for layer {d}: {err}");
        }
    }
    let loads = |l: &str| l.ends_with("the far engine loads the image");
    assert!(err.lines().any(|l| stamped(l) && loads(l)), "{err}");
}

#[test]
fn quiet_prints_the_summary_only() {
    let e = need_env!();
    let image = format!("{}:1", unique("progress-quiet"));
    build_image(&e.local, &image, fresh_seed(), 64 * 1024, "quiet\n");
    let out = push(e, &image, &["--quiet"]).output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| *l != "far-side-note").collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with(&format!("{image} on the far side: sent ")),
        "{err}"
    );
}
