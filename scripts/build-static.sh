#!/usr/bin/env bash
# Build what ships: dos as one static binary (musl, stripped, ngrok in),
# for this machine's architecture. The release workflow runs this, and so
# does the test command, whose far sides then run this very binary.
#
#   scripts/build-static.sh [OUT]     prints the binary's path
#
# Needs a musl C compiler for aws-lc-sys (Debian: musl-tools) and the
# rustup target; both are installed here when missing and this runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
target="$(uname -m)-unknown-linux-musl"
if ! command -v musl-gcc >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >&2
  else
    echo "build-static: needs musl-gcc (Debian/Ubuntu: apt-get install musl-tools)" >&2
    exit 1
  fi
fi
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target" >&2
fi
cargo build --locked --profile dist --target "$target" >&2
bin="${CARGO_TARGET_DIR:-$PWD/target}/$target/dist/dos"
if [[ -n ${1:-} ]]; then
  install -m 755 "$bin" "$1"
  bin=$1
fi
echo "$bin"
