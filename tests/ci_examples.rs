//! The CI configurations shipped in ci-examples/ and .circleci/ are what a
//! user copies: every file must be valid YAML of the right shape, and every
//! `dos` command line in them must parse with the real CLI definition.

use std::path::{Path, PathBuf};

use clap::Parser;
use dos::cli::{Cli, Command};
use dos::reference::ImageRef;
use serde_yaml_ng::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root().join("ci-examples"), root().join(".circleci")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml")) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn load(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every string in the document.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Sequence(s) => s.iter().for_each(|x| strings(x, out)),
        Value::Mapping(m) => m.iter().for_each(|(k, x)| {
            strings(k, out);
            strings(x, out)
        }),
        Value::Tagged(t) => strings(&t.value, out),
        _ => {}
    }
}

/// Shell and CI variables replaced by sample values, as the shell would.
fn expand(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let len = if let Some(inner) = after.strip_prefix("{{") {
            inner.find("}}").map_or(after.len(), |j| j + 4)
        } else if let Some(inner) = after.strip_prefix('{') {
            inner.find('}').map_or(after.len(), |j| j + 2)
        } else {
            after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len())
        };
        out.push_str("sample1");
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Command lines that run dos, from shell snippets.
fn dos_lines(text: &str) -> Vec<Vec<String>> {
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let start = if l.starts_with("dos ") {
                0
            } else {
                l.find("|| dos ").map(|i| i + 3)?
            };
            let words = shlex::split(&expand(&l[start..]))
                .unwrap_or_else(|| panic!("unbalanced quotes: {l}"));
            Some(words)
        })
        .collect()
}

/// Parse with the real CLI; for a push, also the `dos pull` it starts.
fn check_command(words: &[String], file: &Path) -> (usize, usize) {
    let cli =
        Cli::try_parse_from(words).unwrap_or_else(|e| panic!("{}: {words:?}: {e}", file.display()));
    match cli.command {
        Command::Push(p) => {
            ImageRef::parse(&p.image).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let cmd = p.command.join(" ");
            let at = cmd.find("dos pull").unwrap_or_else(|| {
                panic!(
                    "{}: the far command doesn't run dos pull: {cmd}",
                    file.display()
                )
            });
            let pull = shlex::split(&cmd[at..]).unwrap();
            let (_, pulls) = check_command(&pull, file);
            assert_eq!(pulls, 1);
            (1, 0)
        }
        Command::Pull(p) => {
            let image = p
                .image
                .unwrap_or_else(|| panic!("{}: dos pull without an image", file.display()));
            ImageRef::parse(&image).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            (0, 1)
        }
    }
}

#[test]
fn every_ci_file_is_valid_yaml_and_every_dos_command_parses() {
    let files = yaml_files();
    assert!(files.len() >= 3, "found only {files:?}");
    for f in &files {
        let doc = load(f);
        let mut all = Vec::new();
        strings(&doc, &mut all);
        let mut pushes = 0;
        for s in &all {
            for words in dos_lines(s) {
                pushes += check_command(&words, f).0;
            }
            let lower = s.to_lowercase();
            assert!(
                !lower.contains("stricthostkeychecking=no")
                    && !lower.contains("stricthostkeychecking no"),
                "{}: host-key checking turned off",
                f.display()
            );
        }
        if f.starts_with(root().join("ci-examples")) {
            assert!(pushes > 0, "{}: no dos push found", f.display());
        }
    }
}

#[test]
fn circleci_files_have_the_shape_circleci_expects() {
    for f in yaml_files().iter().filter(|f| f.ends_with("config.yml")) {
        let doc = load(f);
        assert_eq!(doc["version"], Value::from(2.1), "{}", f.display());
        let jobs = doc["jobs"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{}: no jobs", f.display()));
        for (name, job) in jobs {
            assert!(
                job.get("docker").is_some() || job.get("machine").is_some(),
                "{}: job {name:?} has no executor",
                f.display()
            );
            assert!(job["steps"].as_sequence().is_some_and(|s| !s.is_empty()));
        }
        let commands = doc.get("commands").and_then(Value::as_mapping);
        // Every step that names a command refers to a built-in or a defined one.
        let builtin = [
            "checkout",
            "setup_remote_docker",
            "add_ssh_keys",
            "run",
            "restore_cache",
            "save_cache",
        ];
        for (_, job) in jobs {
            for step in job["steps"].as_sequence().unwrap() {
                let name = match step {
                    Value::String(s) => s.clone(),
                    Value::Mapping(m) => {
                        m.keys().next().and_then(Value::as_str).unwrap().to_string()
                    }
                    _ => panic!("odd step {step:?}"),
                };
                let defined = commands.is_some_and(|c| c.contains_key(name.as_str()));
                assert!(
                    builtin.contains(&name.as_str()) || defined,
                    "{}: unknown step {name}",
                    f.display()
                );
            }
        }
        for (_, wf) in doc["workflows"].as_mapping().expect("workflows") {
            for j in wf["jobs"].as_sequence().expect("workflow jobs") {
                let name = match j {
                    Value::String(s) => s.clone(),
                    Value::Mapping(m) => {
                        m.keys().next().and_then(Value::as_str).unwrap().to_string()
                    }
                    _ => panic!("odd workflow job {j:?}"),
                };
                assert!(
                    jobs.contains_key(name.as_str()),
                    "{}: workflow names unknown job {name}",
                    f.display()
                );
            }
        }
    }
}

#[test]
fn github_workflows_have_the_shape_actions_expects() {
    let f = root().join("ci-examples/github-actions/deploy.yml");
    let doc = load(&f);
    assert!(doc.get("on").is_some());
    for (name, job) in doc["jobs"].as_mapping().expect("jobs") {
        assert!(job["runs-on"].as_str().is_some(), "job {name:?}");
        for step in job["steps"].as_sequence().expect("steps") {
            assert!(
                step.get("uses").is_some() || step.get("run").is_some(),
                "{step:?}"
            );
        }
    }
    // Secrets reach the shell through env:, never pasted into a script.
    let text = std::fs::read_to_string(&f).unwrap();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        if line.contains("secrets.") {
            assert!(
                line.trim_start()
                    .split(':')
                    .next()
                    .unwrap()
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_'),
                "{line}"
            );
        }
    }
}

#[test]
fn the_expander_and_extractor_work() {
    assert_eq!(expand("app:$CIRCLE_SHA1 x"), "app:sample1 x");
    assert_eq!(expand("\"${{ github.sha }}\""), "\"sample1\"");
    let lines = dos_lines("command -v dos || cargo install x\ndos push a:1 ssh h dos pull a:1\n");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0][1], "push");
}
