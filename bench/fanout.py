#!/usr/bin/env python3
"""The fan-out benchmark: one push to 1, 3 and 5 hosts behind one shared
uplink (tests/harness/env.sh's f1…f5, each with its own sshd and Docker
daemon), unshaped and on a shaped uplink, in one run. Started by
bench/run.sh --fanout, which brings the hosts up with FAN_HOSTS=5.

Every row is a cold push (each host wiped first) of the benchmark's image,
checked on every host (the same image ID as here) before it counts. It
reports wall seconds, local CPU seconds (dos and the ssh processes it
runs: user + system), and bytes on the uplink; beside dos, the best a pipe
can do: `docker save | zstd` once, its output copied to one
`ssh HOST 'zstd -d | docker load'` per host. And through a hub: f1 runs a
registry on its loopback (the harness starts it) behind `dos hub` forced
commands; `dos push --hub hub --to f2,…` pushes into it once and each
server fetches from it over its own link.
"""
import argparse
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import IMG, MB, Bed, build_images, log, sh  # noqa: E402

CHUNK = 1 << 20


class Fan:
    def __init__(self, bed, delay_ms):
        self.bed = bed
        v = bed.vars
        self.n = int(v["DOS_TEST_FAN_HOSTS"])
        self.hosts = [f"f{k}" for k in range(1, self.n + 1)]
        self.sock = {h: f"unix://{bed.dir}/{h}.sock" for h in self.hosts}
        self.uplink = v["DOS_TEST_FAN_UPLINK"]
        self.ssh_config = bed.write_ssh_config(delay_ms)
        # ssh through /usr/bin/time: its CPU apart from the rest.
        self.ssh = os.path.join(bed.dir, "ssh-timed")
        with open(self.ssh, "w") as f:
            f.write('#!/bin/sh\nexec /usr/bin/time -a -o "$DOS_BENCH_SSH_CPU" -f "%U %S" ssh "$@"\n')
        os.chmod(self.ssh, 0o755)

    def hub_setup(self):
        """Keys whose forced command is `dos hub` (a deployer that may push,
        servers that may read), and ssh configs naming f1 `hub` with them."""
        d = tempfile.mkdtemp(prefix="hub.", dir=self.bed.dir)
        base = open(self.ssh_config).read()
        ip = None
        for block in base.split("\nHost "):
            lines = block.splitlines()
            if lines and lines[0].strip() == "f1":
                ip = next(l.split()[1] for l in lines if l.strip().startswith("HostName"))
        self.hub_cfg = {}
        for name, lists in (("deployer", "--push 'bench/*'"), ("server", "--pull 'bench/*'")):
            key = os.path.join(d, name)
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
            pub = open(key + ".pub").read().strip()
            with open(os.path.join(self.bed.dir, "authorized_keys"), "a") as f:
                f.write(f'command="dos hub --registry 127.0.0.1:5000 {lists}",restrict {pub}\n')
            cfg = os.path.join(d, f"ssh_config.{name}")
            with open(cfg, "w") as f:
                f.write(f"Host hub\n  HostName {ip}\n  User root\n  IdentityFile {key}\n"
                        f"  IdentitiesOnly yes\n  UserKnownHostsFile {self.bed.dir}/known_hosts\n"
                        "  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n" + base)
            self.hub_cfg[name] = cfg

    def wipe_hub(self):
        shutil.rmtree(os.path.join(self.bed.dir, "f1-registry", "docker"), ignore_errors=True)

    def uplink_bytes(self):
        s = f"/sys/class/net/{self.uplink}/statistics"
        return sum(int(open(f"{s}/{k}").read()) for k in ("rx_bytes", "tx_bytes"))

    def shape(self, rate):
        sh(["bash", self.bed.env_sh, "shape-fan", self.bed.dir], env=dict(os.environ, RATE=rate))

    def wipe(self, hosts):
        for h in hosts:
            d = self.sock[h]
            ids = self.bed.docker(d, "images", "-aq", check=False).split()
            if ids:
                self.bed.docker(d, "rmi", "-f", *sorted(set(ids)), check=False)
            self.bed.docker(d, "image", "prune", "-af", check=False)
            if self.bed.docker(d, "images", "-aq"):
                raise RuntimeError(f"{h} still has images")

    def check(self, hosts, ref):
        want = self.bed.image_id(self.bed.local, ref)
        for h in hosts:
            got = self.bed.image_id(self.sock[h], ref)
            if got != want:
                return f"{h} holds {got}, not {want}"
        return None


HUB = "dos --hub f1"


def dos_cmd(fan, hosts, ref):
    return ["dos", "push", "-q", ref, "--to", ",".join(hosts), "--parallel", str(len(hosts))]


def pipe_run(fan, hosts, ref, env):
    """docker save | zstd once, copied to one ssh … docker load per host."""
    save = subprocess.Popen(
        f"docker save {shlex.quote(ref)} | zstd -3 --long=24 -T2 -c", shell=True,
        env=env, stdout=subprocess.PIPE)
    loads = [subprocess.Popen(
        [fan.ssh, "-F", fan.ssh_config, h, "zstd -d -c --long=24 | docker load -q"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env) for h in hosts]
    while True:
        b = save.stdout.read(CHUNK)
        if not b:
            break
        for p in loads:
            p.stdin.write(b)
    for p in loads:
        p.stdin.close()
    codes = [save.wait()] + [p.wait() for p in loads]
    return max(codes, key=abs)


def measure(fan, method, hosts, ref):
    fan.wipe(hosts)
    env = fan.bed.local_env(fresh=True)
    env["DOS_SSH"] = f"{fan.ssh} -F {fan.ssh_config}"
    times = tempfile.NamedTemporaryFile(prefix="ssh-cpu.", dir=fan.bed.dir, delete=False).name
    env["DOS_BENCH_SSH_CPU"] = times
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0 = fan.uplink_bytes()
    t0 = time.monotonic()
    if method == "dos":
        r = subprocess.run(dos_cmd(fan, hosts, ref), env=env, stdin=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
        code, err = r.returncode, r.stderr
    elif method == HUB:
        fan.wipe_hub()
        env["DOS_SSH"] = f"{fan.ssh} -F {fan.hub_cfg['deployer']}"
        cmd = ["dos", "push", "-q", ref, "--hub", "hub", "--to", ",".join(hosts),
               "--hub-ssh", f"ssh -F {fan.hub_cfg['server']}", "--parallel", str(len(hosts))]
        r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        code, err = r.returncode, r.stderr
    else:
        code, err = pipe_run(fan, hosts, ref, env), ""
    secs = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    nbytes = fan.uplink_bytes() - b0
    if code != 0:
        return {"error": f"exit {code}: {err.strip()[-400:]}"}
    bad = fan.check(hosts, ref)
    if bad:
        return {"error": bad}
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    ssh_cpu = 0.0
    for line in open(times):
        parts = line.split()
        if len(parts) == 2:
            try:
                ssh_cpu += float(parts[0]) + float(parts[1])
            except ValueError:
                pass
    os.unlink(times)
    return {"secs": secs, "cpu": cpu, "ssh_cpu": ssh_cpu, "bytes": nbytes}


def median(rs):
    ok = sorted((r for r in rs if "error" not in r), key=lambda r: r["secs"])
    if len(ok) * 2 <= len(rs):
        return next(r for r in rs if "error" in r)
    return ok[(len(ok) - 1) // 2]


def fmt(r):
    if "error" in r:
        return f"FAILED ({r['error']})"
    return f"{r['secs']:.2f} s, CPU {r['cpu']:.2f} s (ssh {r['ssh_cpu']:.2f} s), {r['bytes'] / MB:.1f} MB"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--env", required=True)
    ap.add_argument("--dos-dir", required=True)
    ap.add_argument("--rate", default="20mbit")
    ap.add_argument("--delay-ms", type=int, default=25)
    ap.add_argument("--scale", type=float, default=0.25, help="image size factor (see bench.py)")
    ap.add_argument("--runs", type=int, default=3, help="unshaped rounds (median reported)")
    ap.add_argument("--counts", default="1,3,5")
    a = ap.parse_args()

    bed = Bed(a.env, a.delay_ms, a.dos_dir)
    fan = Fan(bed, 0)
    counts = [int(c) for c in a.counts.split(",") if int(c) <= fan.n]
    build_images(bed, a.scale, bed.vars["DOS_TEST_BUSYBOX"])
    ref = f"{IMG}:2"
    methods = ["dos", "save|zstd once, tee to N ssh loads"]
    # Through the hub f1: the servers are the other hosts.
    servers = sorted({min(c, fan.n - 1) for c in counts if fan.n > 1})
    rows = {}
    fan.shape("none")
    fan.hub_setup()
    log("unshaped")
    for i in range(a.runs):
        for n in counts:
            for m in methods:
                r = measure(fan, m, fan.hosts[:n], ref)
                rows.setdefault(("unshaped", n, m), []).append(r)
                log(f"  {n} hosts, {m} (round {i + 1}): {fmt(r)}")
        for n in servers:
            r = measure(fan, HUB, fan.hosts[1:n + 1], ref)
            rows.setdefault(("unshaped", n, HUB), []).append(r)
            log(f"  {n} servers, {HUB} (round {i + 1}): {fmt(r)}")
    fan = Fan(bed, a.delay_ms)
    fan.hub_setup()
    fan.shape(a.rate)
    log(f"shared uplink {a.rate}, {a.delay_ms} ms one way")
    try:
        for n in counts:
            for m in methods:
                r = measure(fan, m, fan.hosts[:n], ref)
                rows[(a.rate, n, m)] = [r]
                log(f"  {n} hosts, {m}: {fmt(r)}")
        for n in servers:
            r = measure(fan, HUB, fan.hosts[1:n + 1], ref)
            rows[(a.rate, n, HUB)] = [r]
            log(f"  {n} servers, {HUB}: {fmt(r)}")
    finally:
        fan.shape("none")
    rate_bps = parse_rate(a.rate)

    print(f"\n## Fan-out: {ref} to 1, 3 and 5 hosts behind one uplink\n")
    print("| uplink | hosts | dos | save\\|zstd once, tee to N ssh loads |")
    print("|---|---|---|---|")
    res = {k: median(v) for k, v in rows.items()}
    for link in ("unshaped", a.rate):
        for n in counts:
            print(f"| {link} | {n} | {fmt(res[(link, n, methods[0])])} | {fmt(res[(link, n, methods[1])])} |")
    print()
    print(f"Through a hub: {ref} pushed into f1's registry once, then fetched by each server from f1 "
          "(the uplink row counts the deploy machine's uplink only)\n")
    print(f"| uplink | servers | {HUB} |")
    print("|---|---|---|")
    for link in ("unshaped", a.rate):
        for n in servers:
            print(f"| {link} | {n} | {fmt(res[(link, n, HUB)])} |")
    print()
    checks = []
    one, five = res.get(("unshaped", 1, "dos")), res.get(("unshaped", max(counts), "dos"))
    if one and five and "error" not in one and "error" not in five:
        k = max(counts)
        checks.append((f"local CPU for {k} hosts ≤ 1.3× one (unshaped)",
                       five["cpu"] <= 1.3 * one["cpu"],
                       f"{five['cpu']:.2f} s vs {one['cpu']:.2f} s = {five['cpu'] / one['cpu']:.2f}×"))
        checks.append((f"wall for {k} hosts ≤ 1.5× one (unshaped)",
                       five["secs"] <= 1.5 * one["secs"],
                       f"{five['secs']:.2f} s vs {one['secs']:.2f} s = {five['secs'] / one['secs']:.2f}×"))
    for n in counts:
        r = res.get((a.rate, n, "dos"))
        if r and "error" not in r:
            ideal = r["bytes"] * 8 / rate_bps
            checks.append((f"{n} hosts on the shared {a.rate}: wall ≤ 1.15× (bytes ÷ rate)",
                           r["secs"] <= 1.15 * ideal,
                           f"{r['secs']:.2f} s vs {ideal:.2f} s = {r['secs'] / ideal:.2f}×"))
    h1, hk = res.get((a.rate, servers[0], HUB)) if servers else None, res.get((a.rate, servers[-1], HUB)) if servers else None
    if h1 and hk and "error" not in h1 and "error" not in hk:
        checks.append((f"through a hub, the uplink carries one copy ({servers[-1]} servers ≤ 1.1× {servers[0]})",
                       hk["bytes"] <= 1.1 * h1["bytes"],
                       f"{hk['bytes'] / MB:.1f} MB vs {h1['bytes'] / MB:.1f} MB = {hk['bytes'] / h1['bytes']:.2f}×"))
    else:
        checks.append(("through a hub, the uplink carries one copy", False,
                       f"no figure: {(hk or h1 or {}).get('error', 'no servers')}"))
    print("| target | result | figure |\n|---|---|---|")
    for name, ok, fig in checks:
        print(f"| {name} | {'met' if ok else 'MISSED'} | {fig} |")


def parse_rate(s):
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for u, f in units.items():
        if s.endswith(u):
            return float(s[: -len(u)]) * f
    return float(s)


if __name__ == "__main__":
    main()
