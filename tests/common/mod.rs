//! Shared by the integration tests: the environment `tests/harness/env.sh`
//! starts (real daemons, a real sshd), and helpers that drive the real
//! `dos` binary and the real docker CLI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// What env.sh started.
pub struct Env {
    pub local: String,
    pub peer: String,
    pub remote: String,
    pub ssh_config: String,
    pub link: String,
    pub netns: String,
    pub busybox: PathBuf,
    /// The remote daemon over tcp: from here, a detached daemon whose
    /// loopback is not ours (like CI remote docker).
    pub detached: String,
    /// This host's address on the link (reachable from the remote host).
    pub local_ip: String,
    /// A daemon whose data root is a small tmpfs (a far disk that fills up).
    pub tiny: String,
    pub tiny_root: PathBuf,
    /// Docker with the containerd image store, here and on the second host.
    pub c_local: String,
    pub c_remote: String,
    /// podman's API on the second host, and its storage (podman's global
    /// flags) for the podman CLI.
    pub podman: String,
    pub podman_store: String,
    /// The hosts behind one shared uplink (ssh aliases f1…fN): each one's
    /// daemon socket, and its port on the switch namespace's bridge.
    pub fan: Vec<FanHost>,
    pub fan_switch: String,
}

pub struct FanHost {
    pub alias: String,
    pub docker: String,
    pub port: String,
}

/// The environment, or `None` when the tests run outside `tests/run.sh`
/// (then Docker-backed tests say so and pass). Under `tests/run.sh`,
/// DOS_TEST_REQUIRE=1 turns a missing environment into a failure, so CI
/// can't silently skip them.
pub fn env() -> Option<&'static Env> {
    static ENV: OnceLock<Option<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let e = (|| {
            Some(Env {
                local: get("DOS_TEST_LOCAL")?,
                peer: get("DOS_TEST_PEER")?,
                remote: get("DOS_TEST_REMOTE")?,
                ssh_config: get("DOS_TEST_SSH_CONFIG")?,
                link: get("DOS_TEST_LINK")?,
                netns: get("DOS_TEST_NETNS")?,
                busybox: get("DOS_TEST_BUSYBOX")?.into(),
                detached: get("DOS_TEST_DETACHED")?,
                local_ip: get("DOS_TEST_LOCAL_IP")?,
                tiny: get("DOS_TEST_TINY")?,
                tiny_root: get("DOS_TEST_TINY_ROOT")?.into(),
                c_local: get("DOS_TEST_C_LOCAL")?,
                c_remote: get("DOS_TEST_C_REMOTE")?,
                podman: get("DOS_TEST_PODMAN")?,
                podman_store: get("DOS_TEST_PODMAN_STORE")?,
                fan: (1..=get("DOS_TEST_FAN_HOSTS")?.parse::<usize>().ok()?)
                    .map(|k| FanHost {
                        alias: format!("f{k}"),
                        docker: format!("unix://{}/f{k}.sock", get("DOS_TEST_DIR").unwrap()),
                        port: format!("{}{k}", get("DOS_TEST_FAN_PORTS").unwrap()),
                    })
                    .collect(),
                fan_switch: get("DOS_TEST_FAN_SWITCH")?,
            })
        })();
        // Only a value that says yes: DOS_TEST_REQUIRE=0 must not require.
        let required = get("DOS_TEST_REQUIRE").is_some_and(|v| v == "1" || v == "true");
        if e.is_none() && required {
            panic!("DOS_TEST_REQUIRE is set but the test environment is missing: run tests/run.sh");
        }
        e
    })
    .as_ref()
}

#[macro_export]
macro_rules! need_env {
    () => {
        match common::env() {
            Some(e) => e,
            None => {
                eprintln!("skipped: no Docker test environment (run tests/run.sh)");
                return;
            }
        }
    };
}

pub fn dos_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dos")
}

/// The directory holding the dos the far sides run: the static binary
/// under tests/run.sh, else this build.
pub fn dos_dir() -> PathBuf {
    match std::env::var("DOS_TEST_BIN_DIR") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(dos_bin()).parent().unwrap().to_path_buf(),
    }
}

pub fn path_with_dos() -> String {
    format!(
        "{}:{}",
        dos_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// `docker ARGS` against the daemon at `host`; panics with the output on failure.
pub fn docker(host: &str, args: &[&str]) -> String {
    let out = docker_try(host, args);
    assert!(
        out.status.success(),
        "docker {args:?} on {host} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn docker_try(host: &str, args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", host)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("running the docker CLI")
}

/// Build `tag` FROM scratch: busybox, a base layer of `base_bytes`
/// pseudo-random bytes from `seed`, and a small app layer holding `app`.
/// Returns the image ID.
pub fn build_image(host: &str, tag: &str, seed: u64, base_bytes: usize, app: &str) -> String {
    let e = env().expect("environment");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&e.busybox, dir.path().join("busybox")).unwrap();
    std::fs::write(dir.path().join("base.bin"), pseudo_random(seed, base_bytes)).unwrap();
    std::fs::write(dir.path().join("app.txt"), app).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY base.bin /base.bin\nCOPY app.txt /app.txt\n\
         CMD [\"/bin/busybox\", \"cat\", \"/app.txt\"]\n",
    )
    .unwrap();
    docker_build(host, tag, dir.path());
    image_id(host, tag).expect("built image")
}

/// `docker build -q --network none -t TAG DIR` on `host`.
pub fn docker_build(host: &str, tag: &str, dir: &std::path::Path) {
    docker(
        host,
        &[
            "build",
            "-q",
            "--network",
            "none",
            "-t",
            tag,
            dir.to_str().unwrap(),
        ],
    );
}

/// A seed no earlier run used, so a far daemon can't already hold the layer.
pub fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ (u64::from(std::process::id()) << 32)
}

pub fn pseudo_random(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `docker save IMAGE | docker load` from one engine to another (the way
/// a far side gets an image without dos); either half failing fails.
pub fn copy_image(from: &str, to: &str, image: &str) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; DOCKER_HOST={from} docker save {image} | DOCKER_HOST={to} docker load -q"
        ))
        .output()
        .expect("running docker save | docker load");
    assert!(
        out.status.success(),
        "docker save {image} | docker load, {from} to {to}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn image_id(host: &str, image: &str) -> Option<String> {
    let out = docker_try(host, &["image", "inspect", "-f", "{{.Id}}", image]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Every name (tags and digest references) on a daemon that points into a
/// loopback registry: what a transfer must not leave behind.
pub fn loopback_names(host: &str, repo: &str) -> Vec<String> {
    names_under(host, "127.0.0.1:", repo)
}

/// Every name on a daemon under registry host `prefix` for `repo`.
/// No temporary name (under a loopback registry) is left for `repo` on `host`.
pub fn assert_clean(host: &str, repo: &str) {
    let left = loopback_names(host, repo);
    assert!(left.is_empty(), "temporary names left on {host}: {left:?}");
}

pub fn names_under(host: &str, prefix: &str, repo: &str) -> Vec<String> {
    let ids = docker(host, &["image", "ls", "-q", "--no-trunc"]);
    let mut names = Vec::new();
    for id in ids.lines().filter(|l| !l.is_empty()) {
        let out = docker_try(
            host,
            &[
                "image",
                "inspect",
                "-f",
                "{{json .RepoTags}} {{json .RepoDigests}}",
                id,
            ],
        );
        for n in String::from_utf8_lossy(&out.stdout).split(['"', ',', '[', ']', ' ']) {
            if n.starts_with(prefix) && n.contains(&format!("/{repo}")) {
                names.push(n.to_string());
            }
        }
    }
    names
}

/// Run a container (no network) and return its stdout.
pub fn run_container(host: &str, image: &str) -> String {
    docker(host, &["run", "--rm", "--network", "none", image])
}

/// Run `dos ARGS` with the local daemon as DOCKER_HOST.
pub fn dos(docker_host: &str, args: &[&str]) -> Output {
    dos_env(docker_host, args, &[])
}

/// `dos ARGS` with extra environment variables.
pub fn dos_env(docker_host: &str, args: &[&str], vars: &[(&str, &str)]) -> Output {
    dos_command(docker_host, args)
        .envs(vars.iter().copied())
        .output()
        .expect("running dos")
}

/// The `dos ARGS` command, not yet started, with the local daemon as
/// DOCKER_HOST and none of the CI variables of the machine running the tests.
pub fn dos_command(docker_host: &str, args: &[&str]) -> Command {
    dos_command_of(Path::new(dos_bin()), docker_host, args)
}

/// The binary that ships (scripts/build-static.sh), as tests/run.sh built
/// it for the far sides.
pub fn shipped_dos() -> PathBuf {
    let bin = dos_dir().join("dos");
    assert!(bin.exists(), "no shipped dos at {}", bin.display());
    bin
}

/// [`dos_command`] of another dos binary.
pub fn dos_command_of(bin: &Path, docker_host: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.args(args)
        .env("DOCKER_HOST", docker_host)
        .env("PATH", path_with_dos())
        .env_remove("LOCAL_DOCKER_REGISTRY_PORT")
        .env_remove("DOCKER_REGISTRY_NGROK")
        .env_remove("NGROK_AUTHTOKEN");
    c
}

/// Poll `cond` every 50 ms until it holds; panic with `what` after `limit`.
pub fn wait_for(what: &str, limit: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Send a signal (by name: KILL, STOP, CONT…) to a process; false if it
/// is gone.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("running kill")
        .success()
}

/// Whether a process whose command line contains `pattern` is running.
pub fn running(pattern: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Sockets a dos process listens on in this network namespace, as `ss`
/// lists them.
pub fn dos_listening() -> Vec<String> {
    let out = Command::new("ss")
        .args(["-ltnpH"])
        .output()
        .expect("running ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("((\"dos\","))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// Is any dos process (by its name, not its arguments) alive? A zombie
/// (exited, its parent not yet told) does not count.
pub fn dos_running() -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        // "PID (COMM) STATE …"
        match stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") ")) {
            Some((comm, rest)) => comm == "dos" && !rest.starts_with('Z'),
            None => false,
        }
    })
}

/// "… (via delta; N bytes sent, …)": the bytes the pusher wrote to the transport.
pub fn bytes_sent(stderr: &str) -> u64 {
    let at = stderr
        .find(" bytes sent")
        .unwrap_or_else(|| panic!("no byte count in: {stderr}"));
    stderr[..at]
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in: {stderr}"))
}

/// Files in a directory with their sizes.
pub fn files_in(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| {
                let e = e.ok()?;
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().ok()?.len(),
                ))
            })
            .collect()
        })
        .unwrap_or_default()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Bytes that crossed the veth link to the remote host (both directions).
pub fn link_bytes(e: &Env) -> u64 {
    let read = |f: &str| -> u64 {
        std::fs::read_to_string(format!("/sys/class/net/{}/statistics/{f}", e.link))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    read("tx_bytes") + read("rx_bytes")
}

/// Held by a test that counts the link's bytes, and by the tests of its
/// binary that use the link meanwhile: the count is then its own.
pub fn link_to_myself() -> std::sync::MutexGuard<'static, ()> {
    static LINK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LINK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A port nothing listens on now, found by binding port 0 (for a port that
/// must be named before it is used, or one where nothing must answer).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A name unique to this test run.
pub fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// A transport command that tells whether it was started, even if it was
/// killed at once: an executable script whose access time is set far in
/// the past, which the kernel's exec of it (done before `spawn` returns)
/// brings up to date (relatime updates an access time older than the
/// modification time).
pub struct Tripwire {
    _dir: tempfile::TempDir,
    script: PathBuf,
}

impl Tripwire {
    pub fn new() -> Tripwire {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("transport");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(946_684_800);
        let f = std::fs::File::options().write(true).open(&script).unwrap();
        f.set_times(std::fs::FileTimes::new().set_accessed(old))
            .unwrap();
        Tripwire { _dir: dir, script }
    }

    /// The command to give dos.
    pub fn command(&self) -> &str {
        self.script.to_str().unwrap()
    }

    /// Whether it was started.
    pub fn fired(&self) -> bool {
        let accessed = std::fs::metadata(&self.script).unwrap().accessed().unwrap();
        accessed > std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(946_684_800)
    }
}

/// Wait for the process, at most `limit`; its exit code and its stderr
/// (unless the caller took the pipe).
pub fn finish(mut child: std::process::Child, limit: std::time::Duration) -> (Option<i32>, String) {
    let mut status = None;
    wait_for("dos to exit", limit, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).unwrap();
    }
    (status.unwrap().code(), err)
}

/// Bytes used on the filesystem holding `root` (a tmpfs data root).
pub fn tmpfs_used(root: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=used", "-B1"])
        .arg(root)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// An ssh key whose authorized_keys line on the far host forces a command.
pub struct LockedKey {
    dir: tempfile::TempDir,
}

impl LockedKey {
    /// A new key, installed on the far host as a forced
    /// `dos pull --allow ALLOW`.
    pub fn install(e: &Env, allow: &str) -> LockedKey {
        LockedKey::forcing(e, &format!("dos pull --allow '{allow}'"))
    }

    /// A new key whose forced command is `command`.
    pub fn forcing(e: &Env, command: &str) -> LockedKey {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "dos-locked", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(ok.success());
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let line = format!("command=\"{command}\",restrict {public}");
        let test_dir = std::env::var("DOS_TEST_DIR").expect("DOS_TEST_DIR");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(format!("{test_dir}/authorized_keys"))
            .unwrap();
        std::io::Write::write_all(&mut f, line.as_bytes()).unwrap();
        // The environment's ssh config, with this key only.
        let base = std::fs::read_to_string(&e.ssh_config).unwrap();
        let cfg: String = base
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("IdentityFile") {
                    format!("  IdentityFile {}", key.display())
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.path().join("ssh_config"), cfg + "\n").unwrap();
        LockedKey { dir }
    }

    /// The private key.
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key")
    }

    /// An ssh config for the test hosts that offers this key only.
    pub fn config(&self) -> String {
        self.dir.path().join("ssh_config").display().to_string()
    }
}

/// Run `cmd` with a pseudo-terminal as its stdin, stdout and stderr
/// (util-linux `script`), typing `input`; returns its exit code and all it
/// wrote to the terminal.
pub fn run_in_pty(cmd: &Command, input: &str) -> (Option<i32>, String) {
    let line: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| shlex::try_quote(a.to_str().unwrap()).unwrap().into_owned())
        .collect();
    let mut script = Command::new("script");
    script
        .args(["--quiet", "--return", "--flush", "--command"])
        .arg(format!(
            "stty cols {PTY_COLS} rows 50; exec {}",
            line.join(" ")
        ))
        .arg("/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    let mut child = script.spawn().expect("running script");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The width [`run_in_pty`] gives its terminal.
pub const PTY_COLS: usize = 120;

/// Terminal output as a person reads it at the end: a small screen of
/// [`PTY_COLS`] columns that wraps long lines and follows the escapes a
/// redrawing display uses (cursor up and down, clear line); other escapes
/// are dropped.
pub fn screen_lines(raw: &str) -> Vec<String> {
    let mut rows: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() != Some(&'[') {
                    continue;
                }
                chars.next();
                let mut arg = String::new();
                let mut op = ' ';
                while let Some(&n) = chars.peek() {
                    chars.next();
                    if n.is_ascii_alphabetic() {
                        op = n;
                        break;
                    }
                    arg.push(n);
                }
                let n: usize = arg.parse().unwrap_or(1);
                match op {
                    'A' => row = row.saturating_sub(n),
                    'B' => row += n,
                    'K' if arg == "2" => rows[row].clear(),
                    'K' => rows[row].truncate(col),
                    _ => {}
                }
            }
            '\r' => col = 0,
            '\n' => {
                row += 1;
                col = 0;
            }
            c => {
                if col == PTY_COLS {
                    row += 1;
                    col = 0;
                }
                while rows.len() <= row {
                    rows.push(Vec::new());
                }
                let line = &mut rows[row];
                while line.len() < col {
                    line.push(' ');
                }
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.push(c);
                }
                col += 1;
            }
        }
        while rows.len() <= row {
            rows.push(Vec::new());
        }
    }
    rows.into_iter()
        .map(|r| r.into_iter().collect::<String>().trim_end().to_string())
        .collect()
}
