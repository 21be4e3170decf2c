//! The CI examples, run: each example's shell steps, with the environment
//! it declares, against the test hosts, and the image checked on the far
//! daemon. What only a CI service provides is stubbed: the checkout (a
//! small build context), the remote Docker (the test's local daemon), the
//! key store (the test key in ~/.ssh), the release download (this run's
//! static binary served on 127.0.0.1). ~/.ssh and the install directories
//! are private mounts of a fresh mount namespace, as on a fresh runner.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_yaml_ng::Value;
use sha2::{Digest, Sha256};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(p: &Path) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A release as GitHub serves one: the static binary, SHA256SUMS and
/// install.sh, over HTTP on 127.0.0.1 (port 0). Returns its base URL and
/// the binary's sha256.
fn serve_release() -> (String, String) {
    let bin = std::fs::read(shipped_dos()).unwrap();
    let sum = hex::encode(Sha256::digest(&bin));
    let asset = format!("dos-{}-unknown-linux-musl", std::env::consts::ARCH);
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    files.insert(
        "SHA256SUMS".into(),
        format!("{sum}  {asset}\n").into_bytes(),
    );
    files.insert(asset, bin);
    files.insert(
        "install.sh".into(),
        std::fs::read(root().join("scripts/install.sh")).unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let reply = match files.get(path.trim_start_matches('/')) {
                Some(body) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = conn.write_all(&reply);
        }
    });
    (url, sum)
}

/// One step to run: its script and environment.
struct Step {
    name: String,
    script: String,
    env: Vec<(String, String)>,
}

/// What every example is given: the test hosts as its settings.
struct Settings {
    host: String,
    known_hosts: String,
    key: String,
    release_url: String,
    sha256: String,
    sha: String,
    work: tempfile::TempDir,
}

impl Settings {
    fn new() -> Settings {
        let dir = PathBuf::from(std::env::var("DOS_TEST_DIR").unwrap());
        let (release_url, sha256) = serve_release();
        let work = tempfile::tempdir().unwrap();
        // The checkout: a small build context.
        let ctx = work.path().join("repo");
        std::fs::create_dir(&ctx).unwrap();
        std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
        let seed = fresh_seed();
        std::fs::write(ctx.join("app.txt"), format!("ci example {seed}\n")).unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY app.txt /app.txt\nCMD [\"/bin/busybox\", \"cat\", \"/app.txt\"]\n",
        )
        .unwrap();
        Settings {
            host: format!("root@{}", std::env::var("DOS_TEST_REMOTE_IP").unwrap()),
            known_hosts: std::fs::read_to_string(dir.join("known_hosts")).unwrap(),
            key: std::fs::read_to_string(dir.join("id")).unwrap(),
            release_url,
            sha256,
            sha: format!("{seed:016x}"),
            work,
        }
    }

    fn temp(&self) -> String {
        self.work.path().join("runner-temp").display().to_string()
    }

    /// `${{ … }}` of a GitHub workflow, as the runner would fill it in.
    fn github_expr(&self, expr: &str, inputs: &HashMap<String, String>) -> String {
        match expr {
            "github.sha" => self.sha.clone(),
            "vars.DEPLOY_HOST" => self.host.clone(),
            "vars.DEPLOY_KNOWN_HOSTS" => self.known_hosts.clone(),
            "secrets.DEPLOY_SSH_KEY" => self.key.clone(),
            "vars.DOS_RELEASE_URL" => self.release_url.clone(),
            "vars.DOS_SHA256" => self.sha256.clone(),
            "runner.temp" => self.temp(),
            "github.action_repository" => "OWNER/dos".into(),
            "github.action_ref" => format!("v{}", env!("CARGO_PKG_VERSION")),
            e => match e.strip_prefix("inputs.") {
                Some(i) => inputs
                    .get(i)
                    .unwrap_or_else(|| panic!("no input {i}"))
                    .clone(),
                None => panic!("an expression the test doesn't know: {e}"),
            },
        }
    }
}

/// Fill in every `${{ expr }}`.
fn fill(s: &str, f: &dyn Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${{") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find("}}").expect("unclosed ${{") + i;
        out.push_str(&f(rest[i + 3..end].trim()));
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

fn env_of(v: &Value, f: &dyn Fn(&str) -> String) -> Vec<(String, String)> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
                    };
                    (k.as_str().unwrap().to_string(), fill(&v, f))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The steps of a GitHub job; `uses:` steps are stubbed (checkout) or
/// expanded (dos's own action, from action.yml).
fn github_steps(s: &Settings, job: &Value) -> Vec<Step> {
    let none = HashMap::new();
    let expr = |e: &str| s.github_expr(e, &none);
    let job_env = env_of(&job["env"], &expr);
    let mut steps = Vec::new();
    for step in job["steps"].as_sequence().unwrap() {
        assert!(step.get("if").is_none(), "a conditional step: {step:?}");
        let name = step["name"].as_str().unwrap_or("").to_string();
        if let Some(uses) = step["uses"].as_str() {
            if uses.starts_with("actions/checkout@") {
                steps.push(Step {
                    name: "checkout (stub)".into(),
                    script: "cp -a \"$DOS_TEST_CONTEXT/.\" .".into(),
                    env: vec![],
                });
            } else if uses.starts_with("OWNER/dos@") {
                let mut with: HashMap<String, String> =
                    env_of(&step["with"], &expr).into_iter().collect();
                let action = load(&root().join("action.yml"));
                for (k, v) in action["inputs"].as_mapping().unwrap() {
                    let k = k.as_str().unwrap().to_string();
                    let default = v["default"].as_str().map(str::to_string);
                    with.entry(k.clone()).or_insert_with(|| {
                        default.unwrap_or_else(|| panic!("required input {k} not given"))
                    });
                }
                // The release download is the CI-only part.
                with.insert("release-url".into(), s.release_url.clone());
                let iexpr = |e: &str| s.github_expr(e, &with);
                for a in action["runs"]["steps"].as_sequence().unwrap() {
                    assert_eq!(a["shell"].as_str(), Some("bash"));
                    let mut env = job_env.clone();
                    env.extend(env_of(&a["env"], &iexpr));
                    env.push(("GITHUB_ACTION_PATH".into(), root().display().to_string()));
                    steps.push(Step {
                        name: format!("{name}: {}", a["name"].as_str().unwrap_or("")),
                        script: fill(a["run"].as_str().unwrap(), &iexpr),
                        env,
                    });
                }
            } else {
                panic!("a step the test doesn't know: uses {uses}");
            }
            continue;
        }
        let mut env = job_env.clone();
        env.extend(env_of(&step["env"], &expr));
        steps.push(Step {
            name,
            script: fill(step["run"].as_str().unwrap(), &expr),
            env,
        });
    }
    steps
}

/// The steps of a CircleCI job, its reusable commands expanded.
fn circleci_steps(s: &Settings, doc: &Value, job: &Value) -> Vec<Step> {
    let mut env: Vec<(String, String)> = vec![
        ("DEPLOY_HOST".into(), s.host.clone()),
        ("DEPLOY_KNOWN_HOSTS".into(), s.known_hosts.clone()),
        ("DOS_RELEASE_URL".into(), s.release_url.clone()),
        ("DOS_SHA256".into(), s.sha256.clone()),
        ("CIRCLE_SHA1".into(), s.sha.clone()),
    ];
    env.extend(env_of(&job["environment"], &|e| panic!("{e}")));
    let mut out = Vec::new();
    let mut todo: Vec<Value> = job["steps"].as_sequence().unwrap().clone();
    todo.reverse();
    while let Some(step) = todo.pop() {
        let (name, body) = match &step {
            Value::String(n) => (n.clone(), Value::Null),
            Value::Mapping(m) => {
                let (k, v) = m.iter().next().unwrap();
                (k.as_str().unwrap().to_string(), v.clone())
            }
            _ => panic!("odd step"),
        };
        let script = match name.as_str() {
            "checkout" => "cp -a \"$DOS_TEST_CONTEXT/.\" .".to_string(),
            // The test's local daemon is the remote Docker.
            "setup_remote_docker" => continue,
            // CircleCI puts the project's key where ssh finds it.
            "add_ssh_keys" => {
                "install -m 700 -d ~/.ssh && printf '%s\\n' \"$DOS_TEST_KEY\" > ~/.ssh/id_ed25519 && chmod 600 ~/.ssh/id_ed25519".to_string()
            }
            "restore_cache" | "save_cache" => continue,
            "run" => match &body {
                Value::String(c) => c.clone(),
                m => m["command"].as_str().unwrap().to_string(),
            },
            custom => {
                let steps = doc["commands"][custom]["steps"]
                    .as_sequence()
                    .unwrap_or_else(|| panic!("unknown command {custom}"));
                todo.extend(steps.iter().rev().cloned());
                continue;
            }
        };
        out.push(Step {
            name,
            script,
            env: env.clone(),
        });
    }
    out
}

/// Run the steps in order in a fresh mount namespace (a private ~/.ssh,
/// ~/bin, ~/.docker), like a job on a fresh runner; returns what they
/// printed.
fn run_steps(s: &Settings, e: &Env, steps: &[Step], circleci: bool) -> String {
    let home = std::env::var("HOME").unwrap();
    let base_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let w = s.work.path();
    std::fs::create_dir_all(s.temp()).unwrap();
    let mut driver = format!(
        "set -e\nfor d in .ssh bin .docker; do mkdir -p \"{home}/$d\"; mount -t tmpfs -o mode=700 dos-ci \"{home}/$d\"; done\n\
         mkdir -p {w}/job && cd {w}/job\n: > {w}/github_path\n: > {w}/bash_env\n\
         if command -v dos; then echo 'dos is on PATH before the install step' >&2; exit 1; fi\n",
        w = w.display()
    );
    for (i, step) in steps.iter().enumerate() {
        let file = w.join(format!("step{i}.sh"));
        std::fs::write(&file, &step.script).unwrap();
        let mut exports = String::new();
        for (k, v) in &step.env {
            exports.push_str(&format!("export {k}={}\n", shlex::try_quote(v).unwrap()));
        }
        let envfile = w.join(format!("step{i}.env"));
        std::fs::write(&envfile, exports).unwrap();
        let shell = if circleci {
            format!(
                "/bin/bash -eo pipefail -c '. \"$BASH_ENV\"; . {}'",
                file.display()
            )
        } else {
            format!(
                "/bin/bash --noprofile --norc -eo pipefail {}",
                file.display()
            )
        };
        driver.push_str(&format!(
            "echo '>>> {name}' >&2\n(\n  PATH={base_path}\n  while read -r p; do PATH=\"$p:$PATH\"; done < {w}/github_path\n  . {env}\n  exec {shell}\n) || {{ echo \">>> step failed: {name}\" >&2; exit 1; }}\n",
            name = step.name.replace('\'', ""),
            w = w.display(),
            env = envfile.display(),
        ));
    }
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &driver])
        .env_clear()
        .env("HOME", &home)
        .env("PATH", base_path)
        .env("DOCKER_HOST", &e.local)
        .env("DOCKER_BUILDKIT", "0")
        .env("DOS_TEST_CONTEXT", w.join("repo"))
        .env("DOS_TEST_KEY", &s.key)
        .env("RUNNER_TEMP", s.temp())
        .env("GITHUB_PATH", w.join("github_path"))
        .env("GITHUB_SHA", &s.sha)
        .env("BASH_ENV", w.join("bash_env"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the example's steps failed:\n{log}");
    log
}

/// The image the example built is on the far daemon, the same one, and
/// the dos that pushed it is the one the example installed.
fn check_arrived(e: &Env, s: &Settings, log: &str) {
    let image = format!("app:{}", s.sha);
    let here = image_id(&e.local, &image).unwrap_or_else(|| panic!("{image} not built:\n{log}"));
    assert_eq!(
        image_id(&e.remote, &image).as_deref(),
        Some(here.as_str()),
        "{log}"
    );
    assert!(log.contains("install.sh: dos "), "{log}");
    assert!(
        log.contains(&format!("{image} on {}: sent ", s.host)),
        "{log}"
    );
}

#[test]
fn the_github_actions_examples_deploy_an_image() {
    let e = need_env!();
    for file in ["deploy.yml", "deploy-with-action.yml"] {
        let s = Settings::new();
        let doc = load(&root().join("ci-examples/github-actions").join(file));
        let jobs = doc["jobs"].as_mapping().unwrap();
        assert_eq!(jobs.len(), 1, "{file}");
        let (_, job) = jobs.iter().next().unwrap();
        let steps = github_steps(&s, job);
        let log = run_steps(&s, e, &steps, false);
        check_arrived(e, &s, &log);
    }
}

#[test]
fn the_circleci_example_deploys_an_image() {
    let e = need_env!();
    let s = Settings::new();
    let doc = load(&root().join("ci-examples/circleci/config.yml"));
    // deploy-via-registry needs a registry:2 service container (Docker
    // Hub) and ngrok (the internet): neither exists here. Its dos command
    // lines are parsed by ci_examples.rs.
    let steps = circleci_steps(&s, &doc, &doc["jobs"]["deploy"]);
    let log = run_steps(&s, e, &steps, true);
    check_arrived(e, &s, &log);
}
