#!/usr/bin/env bash
# Today's engines for the tests, beside bookworm's Docker 20.10 (classic store):
#
#   engines.sh fetch ROOT                 the newest docker.io and containerd that run on
#                                         this machine, from Debian's archive (sid, else
#                                         trixie), fetched with apt-get download under a
#                                         private sources list (cached in
#                                         /var/cache/dos-test) and unpacked into ROOT
#                                         with dpkg -x: not installed
#   engines.sh start-docker DIR NAME NETNS   containerd + dockerd with the containerd image
#                                         store, socket DIR/NAME.sock (NETNS "": this host)
#   engines.sh start-podman DIR NAME NETNS   podman's API service, socket DIR/NAME.sock
#
# Why unpacked: sid's runc needs a newer glibc than bookworm's; bookworm's
# runc (/usr/sbin/runc, from docker.io) runs the containers.
set -euo pipefail
CACHE=${DOS_TEST_CACHE:-/var/cache/dos-test}

fetch() {
  local root=$1 suite debs
  for suite in sid trixie; do
    debs=$CACHE/debs-$suite
    if ! ls "$debs"/docker.io_*.deb "$debs"/containerd_*.deb >/dev/null 2>&1; then
      local apt=$CACHE/apt-$suite
      rm -rf "$apt" "$debs"
      mkdir -p "$apt/lists/partial" "$apt/cache/partial" "$debs"
      echo "deb http://deb.debian.org/debian $suite main" >"$apt/sources.list"
      local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "Dir::Cache::Archives=$apt/cache")
      apt-get "${opts[@]}" update -qq >&2 || continue
      (cd "$debs" && apt-get "${opts[@]}" download docker.io containerd >&2) || continue
    fi
    rm -rf "$root"; mkdir -p "$root"
    for d in "$debs"/*.deb; do dpkg -x "$d" "$root"; done
    if "$root/usr/sbin/dockerd" --version >/dev/null 2>&1 && "$root/usr/bin/containerd" --version >/dev/null 2>&1; then
      echo "engines.sh: Docker from Debian $suite: $("$root/usr/sbin/dockerd" --version); $("$root/usr/bin/containerd" --version)" >&2
      return 0
    fi
    echo "engines.sh: Debian $suite's Docker does not run here" >&2
  done
  echo "engines.sh: no Docker with the containerd image store from Debian's archive runs on this machine" >&2
  return 1
}

start_docker() {
  local dir=$1 name=$2 ns=$3 root=$1/engine
  local d=$dir/$name pre=()
  [[ -n $ns ]] && pre=(nsenter --net=/run/netns/$ns)
  mkdir -p "$d/bin"
  ln -sf "$root/usr/bin/containerd-shim-runc-v2" "$d/bin/"
  ln -sf /usr/sbin/runc "$d/bin/runc"
  ln -sf "$root/usr/bin/docker-init" "$d/bin/"
  printf 'version = 3\nroot = "%s/ctd-root"\nstate = "%s/ctd-state"\n[grpc]\n  address = "%s/containerd.sock"\n' \
    "$d" "$d" "$d" >"$d/containerd.toml"
  PATH=$d/bin:$root/usr/bin:$PATH "${pre[@]}" "$root/usr/bin/containerd" --config "$d/containerd.toml" \
    >"$dir/$name-ctd.log" 2>&1 &
  echo $! >"$dir/$name-ctd.pid"
  for _ in $(seq 100); do [[ -S $d/containerd.sock ]] && break; sleep 0.1; done
  echo '{"features":{"containerd-snapshotter":true}}' >"$d/daemon.json"
  PATH=$d/bin:$root/usr/bin:$root/usr/sbin:/usr/sbin:/usr/bin:/sbin:/bin "${pre[@]}" "$root/usr/sbin/dockerd" \
    --config-file "$d/daemon.json" --containerd "$d/containerd.sock" --data-root "$d/data" \
    --exec-root "$d/exec" -H "unix://$dir/$name.sock" --pidfile "$dir/$name.pid" \
    --bridge=none --iptables=false --ip-masq=false --default-ulimit nofile=1024:1024 \
    >"$dir/$name.log" 2>&1 &
}

start_podman() {
  local dir=$1 name=$2 ns=$3 pre=()
  [[ -n $ns ]] && pre=(nsenter --net=/run/netns/$ns)
  "${pre[@]}" podman --root "$dir/$name-root" --runroot "$dir/$name-run" system service --time=0 \
    "unix://$dir/$name.sock" >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
}

case ${1:-} in
  fetch) fetch "$2" ;;
  start-docker) start_docker "$2" "$3" "$4" ;;
  start-podman) start_podman "$2" "$3" "$4" ;;
  *) echo "usage: engines.sh fetch ROOT | start-docker DIR NAME NETNS | start-podman DIR NAME NETNS" >&2; exit 2 ;;
esac
