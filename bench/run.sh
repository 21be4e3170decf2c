#!/usr/bin/env bash
# The benchmark, one command (as root, on a fresh Debian machine):
#   bench/run.sh [--rate 20mbit] [--delay-ms 25] [--scale 1.0] [--scenarios …] [--methods …]
# Builds dos as it ships (the static binary), starts two hosts (tests/harness/env.sh: a network
# namespace with sshd and its own Docker daemon), shapes the link, and
# prints a table: dos against docker save | gzip | ssh docker load,
# save | zstd | ssh load, a registry over ssh -R, and dos's registry relay.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) != 0 ]]; then
  exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,CARGO_TARGET_DIR "$0" "$@"
fi
command -v /usr/bin/time >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends time >/dev/null
}
bin_dir=$(dirname "$(scripts/build-static.sh)")
dir=$(mktemp -d /tmp/dos-bench.XXXXXX)
trap 'tests/harness/env.sh down "$dir"' EXIT
if [[ ${1:-} == --fanout ]]; then
  # The push to several hosts: five of them behind one uplink.
  shift
  FAN_HOSTS=5 BIN_DIR=$bin_dir tests/harness/env.sh up "$dir"
  python3 bench/fanout.py --env "$dir/env" --dos-dir "$bin_dir" "$@"
  exit
fi
BIN_DIR=$bin_dir tests/harness/env.sh up "$dir"
python3 bench/bench.py --env "$dir/env" --dos-dir "$bin_dir" "$@"
