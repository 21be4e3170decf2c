#!/bin/sh
# Install dos: download the static binary of a release for this machine,
# check its sha256, put it in a directory on PATH.
#
#   curl -fsSL https://github.com/OWNER/REPO/releases/latest/download/install.sh | sh
#
# Settings (environment):
#   DOS_VERSION      a release tag (v0.1.0) or `latest` (the default)
#   DOS_SHA256       the binary's expected sha256; without it, the release's
#                    SHA256SUMS is used (pin it in CI: same file, every run)
#   DOS_INSTALL_DIR  where dos goes (default ~/.local/bin, /usr/local/bin as root)
#   DOS_REPO         the GitHub repository releases come from (owner/name)
#   DOS_RELEASE_URL  the base URL of a release's files, overriding DOS_REPO
set -eu

# The release workflow writes its repository here.
repo=${DOS_REPO:-@REPO@}
version=${DOS_VERSION:-latest}

fail() { echo "install.sh: $*" >&2; exit 1; }

case "$(uname -s)" in
  Linux) ;;
  *) fail "dos releases are Linux binaries; this is $(uname -s)" ;;
esac
case "$(uname -m)" in
  x86_64 | amd64) arch=x86_64 ;;
  aarch64 | arm64) arch=aarch64 ;;
  *) fail "no dos release for $(uname -m) (there are x86_64 and aarch64)" ;;
esac
asset="dos-$arch-unknown-linux-musl"

if [ -n "${DOS_RELEASE_URL:-}" ]; then
  base=$DOS_RELEASE_URL
else
  case "$repo" in
    @*) fail "set DOS_REPO=owner/name (the repository dos is released from) or DOS_RELEASE_URL" ;;
  esac
  if [ "$version" = latest ]; then
    base="https://github.com/$repo/releases/latest/download"
  else
    base="https://github.com/$repo/releases/download/$version"
  fi
fi

if [ -z "${DOS_INSTALL_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ]; then DOS_INSTALL_DIR=/usr/local/bin; else DOS_INSTALL_DIR=$HOME/.local/bin; fi
fi

fetch() { # URL FILE
  if command -v curl >/dev/null; then
    curl -fsSL --retry 3 -o "$2" "$1"
  elif command -v wget >/dev/null; then
    wget -q -O "$2" "$1"
  else
    fail "needs curl or wget"
  fi
}
sha256() {
  if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fetch "$base/$asset" "$tmp/dos" || fail "downloading $base/$asset failed"
want=${DOS_SHA256:-}
if [ -z "$want" ]; then
  fetch "$base/SHA256SUMS" "$tmp/SHA256SUMS" || fail "downloading $base/SHA256SUMS failed"
  want=$(awk -v a="$asset" '$2 == a || $2 == "*" a { print $1 }' "$tmp/SHA256SUMS")
  [ -n "$want" ] || fail "SHA256SUMS lists no $asset"
fi
got=$(sha256 "$tmp/dos")
[ "$got" = "$want" ] || fail "$asset has sha256 $got, expected $want: not installed"
chmod 755 "$tmp/dos"
"$tmp/dos" --version >/dev/null || fail "the downloaded dos does not run here"
mkdir -p "$DOS_INSTALL_DIR"
# Next to its final name first, so a running dos is never half replaced.
cp "$tmp/dos" "$DOS_INSTALL_DIR/.dos.$$"
mv -f "$DOS_INSTALL_DIR/.dos.$$" "$DOS_INSTALL_DIR/dos"
echo "install.sh: $("$DOS_INSTALL_DIR/dos" --version) in $DOS_INSTALL_DIR/dos (sha256 $got)" >&2
case ":$PATH:" in
  *":$DOS_INSTALL_DIR:"*) ;;
  *) echo "install.sh: add $DOS_INSTALL_DIR to PATH" >&2 ;;
esac
