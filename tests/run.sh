#!/usr/bin/env bash
# The test command. On a fresh Debian machine (as root): installs what the
# tests need (docker.io, openssh-server, busybox-static, skopeo, …), starts
# real Docker daemons and a real sshd on a second "host" (a network
# namespace), runs every test against them, and stops everything after.
#
#   tests/run.sh [cargo test arguments]
#
# The pushing side is the debug build; every far side runs the static
# release binary scripts/build-static.sh makes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) != 0 ]]; then
  exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,CARGO_TARGET_DIR "$0" "$@"
fi
target=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --locked --all-targets
# What ships (one static binary) is what the far sides run.
static=$(scripts/build-static.sh)
dir=$(mktemp -d /tmp/dos-test.XXXXXX)
trap 'tests/harness/env.sh down "$dir"' EXIT
BIN_DIR=$(dirname "$static") tests/harness/env.sh up "$dir"
# shellcheck disable=SC1091
source "$dir/env"
export DOS_TEST_REQUIRE=1
cargo test --locked --no-fail-fast "$@"
