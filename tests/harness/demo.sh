#!/usr/bin/env bash
# A complete run on one fresh machine (as root): builds dos as it ships (one
# static binary), starts a local Docker daemon and a second host (network
# namespace with sshd and its own daemon, and no dos on its PATH), builds a
# small image, and moves it over ssh with
#   dos push demo:1 --to bare --install
# which first copies dos itself to the far host. Then it shows the image ID
# on both daemons, runs the container on the far one, and stops everything.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ $(id -u) != 0 ]]; then
  exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,CARGO_TARGET_DIR "$0" "$@"
fi
static=$(scripts/build-static.sh)
dir=$(mktemp -d /tmp/dos-demo.XXXXXX)
trap 'tests/harness/env.sh down "$dir"' EXIT
BIN_DIR=$(dirname "$static") tests/harness/env.sh up "$dir"
# shellcheck disable=SC1091
source "$dir/env"
export PATH=$(dirname "$static"):$PATH
# The test hosts' ssh config: "bare" is the second host without dos.
export DOS_SSH="ssh -F $DOS_TEST_SSH_CONFIG"

ctx=$dir/ctx; mkdir -p "$ctx"
cp "$DOS_TEST_BUSYBOX" "$ctx/busybox"
head -c 8M /dev/urandom >"$ctx/data.bin"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY data.bin /data.bin\nCMD ["/bin/busybox", "echo", "hello from the far side"]\n' >"$ctx/Dockerfile"
DOCKER_HOST=$DOS_TEST_LOCAL DOCKER_BUILDKIT=0 docker build -q --network none -t demo:1 "$ctx" \
  >"$dir/build.log" 2>&1 || { cat "$dir/build.log" >&2; exit 1; }

echo "+ dos push demo:1 --to bare --install" >&2
DOCKER_HOST=$DOS_TEST_LOCAL dos push demo:1 --to bare --install

echo "local  image ID: $(DOCKER_HOST=$DOS_TEST_LOCAL docker image inspect -f '{{.Id}}' demo:1)"
echo "remote image ID: $(DOCKER_HOST=$DOS_TEST_REMOTE docker image inspect -f '{{.Id}}' demo:1)"
echo "remote run:      $(DOCKER_HOST=$DOS_TEST_REMOTE docker run --rm --network none demo:1)"
