//! The CI configurations shipped in ci-examples/, .circleci/, .github/ and
//! action.yml are what a user copies (or what releases dos): every file must
//! be valid YAML of the right shape, and every `dos` command line in them
//! must parse with the real CLI definition. The release workflow builds
//! what it must, and the declared rust-version is true. (tests/ci_run.rs
//! runs the examples' steps.)

use std::path::{Path, PathBuf};

use clap::Parser;
use dos::cli::{Cli, Command};
use dos::reference::ImageRef;
use serde_yaml_ng::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files() -> Vec<PathBuf> {
    let mut out = vec![root().join("action.yml")];
    let mut stack = vec![
        root().join("ci-examples"),
        root().join(".circleci"),
        root().join(".github"),
    ];
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
            if !p.to.is_empty() {
                // A host the test's expansion made up is still a host.
                for h in &p.to {
                    dos::host::Host::parse(h).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                }
                return (1, 0);
            }
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
        Command::Fetch(f) => {
            ImageRef::parse(&f.image).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            (0, 0)
        }
        Command::Send(_) | Command::Hub(_) | Command::InstallPlugin(_) => (0, 0),
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
        // An example that uses dos's action pushes through it.
        let uses_action = all.iter().any(|s| s.starts_with("OWNER/dos@"));
        if (f.starts_with(root().join("ci-examples")) && !uses_action) || f.ends_with("action.yml")
        {
            assert!(pushes > 0, "{}: no dos push found", f.display());
        }
    }
}

#[test]
fn circleci_files_have_the_shape_circleci_expects() {
    for f in yaml_files()
        .iter()
        .filter(|f| f.ends_with("config.yml") && f.to_string_lossy().contains("circleci"))
    {
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
    for f in [
        root().join("ci-examples/github-actions/deploy.yml"),
        root().join("ci-examples/github-actions/deploy-with-action.yml"),
        root().join(".github/workflows/release.yml"),
    ] {
        workflow_shape(&f);
    }
}

fn workflow_shape(f: &Path) {
    let doc = load(f);
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
    // Secrets reach the shell through env: or an action's inputs, never
    // pasted into a script.
    let text = std::fs::read_to_string(f).unwrap();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        if line.contains("secrets.") {
            let key = line.trim_start().split(':').next().unwrap();
            assert!(
                key != "run"
                    && !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{}: {line}",
                f.display()
            );
        }
    }
}

#[test]
fn the_action_takes_what_it_says_and_keeps_host_key_checking() {
    let doc = load(&root().join("action.yml"));
    assert_eq!(doc["runs"]["using"].as_str(), Some("composite"));
    let inputs = doc["inputs"].as_mapping().unwrap();
    for i in ["image", "host", "ssh-key", "known-hosts"] {
        assert_eq!(inputs[i]["required"].as_bool(), Some(true), "input {i}");
    }
    let steps = doc["runs"]["steps"].as_sequence().unwrap();
    let all: String = steps.iter().filter_map(|s| s["run"].as_str()).collect();
    assert!(all.contains("scripts/install.sh"));
    assert!(all.contains("known_hosts"));
    assert!(all.contains("dos push \"$IMAGE\" --to \"$HOST\""));
    for s in steps {
        assert_eq!(s["shell"].as_str(), Some("bash"), "{s:?}");
        // Inputs reach the shell through env:, never pasted into a script.
        assert!(!s["run"].as_str().unwrap().contains("${{"), "{s:?}");
    }
}

#[test]
fn the_release_builds_the_static_binary_for_both_architectures() {
    let f = root().join(".github/workflows/release.yml");
    let doc = load(&f);
    let on_tags = doc["on"]["push"]["tags"].as_sequence().unwrap();
    assert!(on_tags.iter().any(|t| t.as_str() == Some("v*")));
    let build = &doc["jobs"]["build"];
    let matrix = build["strategy"]["matrix"]["include"]
        .as_sequence()
        .unwrap();
    let targets: Vec<&str> = matrix
        .iter()
        .map(|m| m["target"].as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"]
    );
    // Each on a runner of its own architecture, with the script the test
    // command runs (so what ships is what is tested).
    for m in matrix {
        let runner = m["runner"].as_str().unwrap();
        let arm = m["target"].as_str().unwrap().starts_with("aarch64");
        assert_eq!(runner.ends_with("-arm"), arm, "{runner}");
    }
    let text = std::fs::read_to_string(&f).unwrap();
    assert!(text.contains("scripts/build-static.sh"));
    assert!(std::fs::read_to_string(root().join("tests/run.sh"))
        .unwrap()
        .contains("scripts/build-static.sh"));
    assert!(text.contains("musl-tools"));
    assert!(text.contains("sha256sum") && text.contains("SHA256SUMS"));
    assert!(text.contains("dist/install.sh"));
    assert!(text.contains("gh release create"));
    // install.sh is POSIX sh and names the assets the release uploads.
    let install = std::fs::read_to_string(root().join("scripts/install.sh")).unwrap();
    assert!(install.contains("dos-$arch-unknown-linux-musl"));
    let ok = std::process::Command::new("sh")
        .args(["-n", "scripts/install.sh"])
        .current_dir(root())
        .status()
        .unwrap();
    assert!(ok.success());
}

/// "1.89" → (1, 89).
fn version(v: &str) -> (u32, u32) {
    let mut it = v.split('.').map(|n| n.parse::<u32>().unwrap());
    (it.next().unwrap(), it.next().unwrap_or(0))
}

#[test]
fn rust_version_is_declared_and_covers_the_lock_and_the_examples() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let declared = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("Cargo.toml declares rust-version")
        .trim_matches('"');
    let declared = version(declared);
    // Every package in the lock builds with it, by its own word. Not
    // --offline: the lock also names packages for other platforms
    // (anstyle-wincon) that no build here downloads, and cargo metadata
    // reads their manifests from the registry.
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for p in meta["packages"].as_array().unwrap() {
        if let Some(v) = p["rust_version"].as_str() {
            assert!(
                version(v) <= declared,
                "{} {} needs Rust {v}, Cargo.toml says {declared:?}",
                p["name"],
                p["version"]
            );
        }
    }
    // The CI files use no Rust image older than that (the examples install
    // the release binary and need none).
    for f in yaml_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        for (at, _) in text.match_indices("rust:") {
            let tag: String = text[at + 5..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            if !tag.is_empty() {
                assert!(version(&tag) >= declared, "{}: rust:{tag}", f.display());
            }
        }
        if f.starts_with(root().join("ci-examples")) {
            assert!(
                !text.contains("cargo install"),
                "{}: compiles dos",
                f.display()
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
