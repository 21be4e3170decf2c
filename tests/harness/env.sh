#!/usr/bin/env bash
# The test environment: real Docker daemons and a real sshd, started from
# nothing and stopped after. Needs root (it makes a network namespace).
#
#   env.sh up DIR     start everything; writes DIR/env (variables for the tests)
#   env.sh down DIR   stop everything and remove DIR
#   RATE=20mbit env.sh shape DIR    shape the link (RATE=none: unshaped)
#
# What it starts:
#   local   dockerd in this network namespace            DIR/local.sock
#   peer    dockerd in this network namespace            DIR/peer.sock   (for `sh -c` transports)
#   remote  a second host: network namespace with its own loopback, a veth link
#           to this one, sshd on REMOTE_IP:22, and its own dockerd  DIR/remote.sock
#   tiny    dockerd whose data root is a 96 MiB tmpfs (a far disk that fills up)
#                                                        DIR/tiny.sock
#   rst     dockerd a fault test restarts mid-push (no other test uses it)
#                                                        DIR/rst.sock
#   env.sh restart DIR rst   stop that daemon and start it again
#   f1…fN   FAN_HOSTS (default 3) more hosts for pushes to several at once: each a
#           network namespace with its own sshd (on FAN_IP_k:22) and dockerd
#           (DIR/fK.sock), all behind one bridge in a switch namespace, reached
#           from here by one uplink veth (the link `shape-fan` shapes: shared by
#           every host)
#   RATE=20mbit env.sh shape-fan DIR   shape that shared uplink
#   Today's engines (tests/harness/engines.sh): the newest Docker and
#   containerd in Debian's archive, unpacked (not installed), with the
#   containerd image store, here (DIR/c-local.sock) and on the second host
#   (DIR/c-remote.sock); podman on the second host (DIR/podman.sock).
set -euo pipefail

need_pkgs() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v sshd >/dev/null || [[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
  command -v skopeo >/dev/null || missing+=(skopeo)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v docker-registry >/dev/null || [[ -x /usr/bin/docker-registry ]] || missing+=(docker-registry)
  command -v zstd >/dev/null || missing+=(zstd)
  command -v curl >/dev/null || missing+=(curl)
  [[ -x /usr/bin/time ]] || missing+=(time)
  command -v python3 >/dev/null || missing+=(python3)
  command -v pgrep >/dev/null && command -v kill >/dev/null || missing+=(procps)
  command -v podman >/dev/null || missing+=(podman)
  command -v dpkg-deb >/dev/null || missing+=(dpkg)
  if ((${#missing[@]})); then
    echo "env.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}


wait_daemon() {
  local sock=$1 log=$2
  for _ in $(seq 300); do
    DOCKER_HOST=unix://$sock docker version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "env.sh: dockerd at $sock did not start; its log:" >&2
  tail -n 30 "$log" >&2
  return 1
}

start_dockerd() {  # NAME [NETNS [EXTRA ARGS…]]
  local name=$1 ns=${2:-}
  shift; shift || true
  local pre=()
  [[ -n $ns ]] && pre=(nsenter --net=/run/netns/$ns)
  "${pre[@]}" dockerd --data-root "$DIR/$name" --exec-root "$DIR/${name}x" \
    -H "unix://$DIR/$name.sock" --pidfile "$DIR/$name.pid" \
    --bridge=none --iptables=false --ip-masq=false \
    --containerd-namespace "dos-$name" --containerd-plugins-namespace "dos-$name-p" \
    "$@" >"$DIR/$name.log" 2>&1 &
}

# FAN_HOSTS hosts behind one bridge: the switch namespace dosw$id holds the
# bridge, the uplink's far end (dosU$id; its near end dosu$id is here) and
# each host's port (dosp$id$k); host k is namespace dosf$id$k at
# 10.252.$net.(10+k), with its own sshd and dockerd.
fan_up() {
  local id=$1 net=$2 k
  local sw="dosw$id"
  echo "$sw dosu$id $FAN_HOSTS" >"$DIR/fan"
  ip netns add "$sw"
  ip -n "$sw" link add br0 type bridge
  ip -n "$sw" link set br0 up
  ip link add "dosu$id" type veth peer name "dosU$id"
  ip link set "dosU$id" netns "$sw"
  ip -n "$sw" link set "dosU$id" master br0 up
  ip addr add "10.252.$net.1/24" dev "dosu$id"; ip link set "dosu$id" up
  for ((k = 1; k <= FAN_HOSTS; k++)); do
    local ns="dosf$id$k" ip="10.252.$net.$((10 + k))"
    ip netns add "$ns"
    ip link add "dosp$id$k" type veth peer name "dosn$id$k"
    ip link set "dosp$id$k" netns "$sw"
    ip -n "$sw" link set "dosp$id$k" master br0 up
    ip link set "dosn$id$k" netns "$ns"
    ip -n "$ns" addr add "$ip/24" dev "dosn$id$k"
    ip -n "$ns" link set "dosn$id$k" up
    ip -n "$ns" link set lo up
    start_dockerd "f$k" "$ns"
    cat >"$DIR/sshd_config-f$k" <<CFG
ListenAddress $ip
Port 22
HostKey $DIR/hostkey
AuthorizedKeysFile $DIR/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
PidFile $DIR/sshd-f$k.pid
SetEnv DOCKER_HOST=unix://$DIR/f$k.sock DOS_SPOOL_DIR=$DIR/spool-f$k PATH=$BIN_DIR:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CFG
    nsenter --net=/run/netns/"$ns" /usr/sbin/sshd -f "$DIR/sshd_config-f$k" -E "$DIR/sshd-f$k.log"
    echo "$ip $(cat "$DIR/hostkey.pub")" >>"$DIR/known_hosts"
  done
  # f1 can serve as a hub for the others: a registry on its loopback.
  mkdir -p "$DIR/f1-registry"
  sed "s|$DIR/hub-registry\$|$DIR/f1-registry|" "$DIR/hub-registry.yml" >"$DIR/f1-registry.yml"
  nsenter --net=/run/netns/"dosf${id}1" /usr/bin/docker-registry serve "$DIR/f1-registry.yml" >"$DIR/f1-registry.log" 2>&1 &
  echo $! >"$DIR/f1-registry.pid"
}

fan_down() {
  [[ -f $DIR/fan ]] || return 0
  local sw up n k
  read -r sw up n <"$DIR/fan"
  local id=${sw#dosw}
  [[ -f $DIR/f1-registry.pid ]] && kill "$(cat "$DIR/f1-registry.pid")" 2>/dev/null || true
  for ((k = 1; k <= n; k++)); do
    [[ -f $DIR/sshd-f$k.pid ]] && kill "$(cat "$DIR/sshd-f$k.pid")" 2>/dev/null || true
    local pid; pid=$(cat "$DIR/f$k.pid" 2>/dev/null || true)
    if [[ -n $pid ]]; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    ip netns del "dosf$id$k" 2>/dev/null || true
  done
  ip link del "$up" 2>/dev/null || true
  ip netns del "$sw" 2>/dev/null || true
}

# Shape the fan hosts' shared uplink both ways (RATE none: unshaped).
shape-fan() {
  local rate=${RATE:?RATE is required} sw up n
  read -r sw up n <"$DIR/fan"
  local far=dosU${up#dosu}
  if [[ $rate == none ]]; then
    tc qdisc del dev "$up" root 2>/dev/null || true
    ip netns exec "$sw" tc qdisc del dev "$far" root 2>/dev/null || true
  else
    tc qdisc replace dev "$up" root tbf rate "$rate" burst 32kb latency 2s
    ip netns exec "$sw" tc qdisc replace dev "$far" root tbf rate "$rate" burst 32kb latency 2s
  fi
}

up() {
  need_pkgs
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  local id; id=$(printf '%s' "$DIR" | cksum | cut -c1-6)
  local ns="dost$id" lif="dosl$id" rif="dosr$id"
  local net=$((id % 200 + 20))
  local lip="10.251.$net.1" rip="10.251.$net.2"
  echo "$ns $lif" >"$DIR/netns"

  ip netns add "$ns"
  ip link add "$lif" type veth peer name "$rif"
  ip link set "$rif" netns "$ns"
  ip addr add "$lip/24" dev "$lif"; ip link set "$lif" up
  ip netns exec "$ns" ip addr add "$rip/24" dev "$rif"
  ip netns exec "$ns" ip link set "$rif" up
  ip netns exec "$ns" ip link set lo up

  start_dockerd local
  start_dockerd peer
  mkdir -p "$DIR/tiny"
  mount -t tmpfs -o size=96m dos-tiny "$DIR/tiny"
  start_dockerd tiny
  start_dockerd rst
  # The remote daemon also listens on tcp on the far host's address: from
  # here it is a "detached" daemon (like CI remote docker) whose loopback is
  # not ours.
  start_dockerd remote "$ns" -H "tcp://$rip:2375" --insecure-registry 10.251.0.0/16

  # sshd on the remote host, key-only, with the dos under test on PATH.
  ssh-keygen -q -t ed25519 -N '' -f "$DIR/id" -C dos-test
  ssh-keygen -q -t ed25519 -N '' -f "$DIR/hostkey" -C dos-test-host
  cp "$DIR/id.pub" "$DIR/authorized_keys"; chmod 600 "$DIR/authorized_keys"
  mkdir -p /run/sshd
  cat >"$DIR/sshd_config" <<CFG
ListenAddress $rip
Port 22
HostKey $DIR/hostkey
AuthorizedKeysFile $DIR/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
PidFile $DIR/sshd.pid
Port 2222
Port 2223
Port 2224
# 22: dos on PATH. 2222: a host without dos (its own HOME, where dos may
# copy itself). 2223: a host whose dos speaks another protocol. 2224: a
# host of another architecture (as its uname says).
Match LocalPort 22
  SetEnv DOCKER_HOST=unix://$DIR/remote.sock DOS_SPOOL_DIR=$DIR/spool-remote PATH=$BIN_DIR:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
Match LocalPort 2222
  SetEnv DOCKER_HOST=unix://$DIR/remote.sock DOS_SPOOL_DIR=$DIR/spool-remote HOME=$DIR/bare-home PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
Match LocalPort 2223
  SetEnv DOCKER_HOST=unix://$DIR/remote.sock DOS_SPOOL_DIR=$DIR/spool-remote HOME=$DIR/old-home PATH=$DIR/old-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
Match LocalPort 2224
  SetEnv DOCKER_HOST=unix://$DIR/remote.sock HOME=$DIR/arm-home PATH=$DIR/arm-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CFG
  mkdir -p "$DIR/bare-home" "$DIR/old-home" "$DIR/old-bin" "$DIR/arm-home" "$DIR/arm-bin"
  printf '#!/bin/sh\ncase "$1" in -m) echo aarch64 ;; *) exec /bin/uname "$@" ;; esac\n' >"$DIR/arm-bin/uname"
  chmod 755 "$DIR/arm-bin/uname"
  # An older dos: says hello with protocol version 1, then exits.
  cat >"$DIR/old-bin/dos" <<'OLD'
#!/usr/bin/env python3
import json, struct, sys
hello = json.dumps({"role": "pull", "image": sys.argv[-1], "release": "0.0.9", "features": []}).encode()
sys.stdout.buffer.write(b"\x89DOS\r\n\x1a\n" + struct.pack(">HI", 1, len(hello)) + hello)
OLD
  chmod 755 "$DIR/old-bin/dos"
  nsenter --net=/run/netns/"$ns" /usr/sbin/sshd -f "$DIR/sshd_config" -E "$DIR/sshd.log"
  for h in "$rip" "[$rip]:2222" "[$rip]:2223" "[$rip]:2224"; do echo "$h $(cat "$DIR/hostkey.pub")"; done >"$DIR/known_hosts"
  # The hub: a real registry (CNCF distribution) on the second host's
  # loopback only; dos hub, as a forced command, is the only way in.
  mkdir -p "$DIR/hub-registry"
  cat >"$DIR/hub-registry.yml" <<CFG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DIR/hub-registry
http:
  addr: 127.0.0.1:5000
CFG
  nsenter --net=/run/netns/"$ns" /usr/bin/docker-registry serve "$DIR/hub-registry.yml" >"$DIR/hub-registry.log" 2>&1 &
  echo $! >"$DIR/hub-registry.pid"
  fan_up "$id" "$net"
  cat >"$DIR/ssh_config" <<CFG
Host remote bare old arm
  HostName $rip
  User root
  IdentityFile $DIR/id
  IdentitiesOnly yes
  UserKnownHostsFile $DIR/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
# The same host; ssh takes the first Port it meets, so these come after.
Host bare
  Port 2222
Host old
  Port 2223
Host arm
  Port 2224
CFG
  local k
  for ((k = 1; k <= FAN_HOSTS; k++)); do
    cat >>"$DIR/ssh_config" <<CFG
Host f$k
  HostName 10.252.$net.$((10 + k))
  User root
  IdentityFile $DIR/id
  IdentitiesOnly yes
  UserKnownHostsFile $DIR/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
CFG
  done

  # Today's engines. None available is a failure, not a skip.
  "$HERE/engines.sh" fetch "$DIR/engine"
  "$HERE/engines.sh" start-docker "$DIR" c-local ""
  "$HERE/engines.sh" start-docker "$DIR" c-remote "$ns"
  "$HERE/engines.sh" start-podman "$DIR" podman "$ns"

  wait_daemon "$DIR/local.sock" "$DIR/local.log"
  wait_daemon "$DIR/peer.sock" "$DIR/peer.log"
  wait_daemon "$DIR/remote.sock" "$DIR/remote.log"
  wait_daemon "$DIR/tiny.sock" "$DIR/tiny.log"
  wait_daemon "$DIR/rst.sock" "$DIR/rst.log"
  for ((k = 1; k <= FAN_HOSTS; k++)); do wait_daemon "$DIR/f$k.sock" "$DIR/f$k.log"; done
  wait_daemon "$DIR/c-local.sock" "$DIR/c-local.log"
  wait_daemon "$DIR/c-remote.sock" "$DIR/c-remote.log"
  wait_daemon "$DIR/podman.sock" "$DIR/podman.log"
  for s in local c-local podman; do
    echo "env.sh: $s: $(DOCKER_HOST=unix://$DIR/$s.sock docker version --format '{{.Server.Version}} {{range .Server.Components}}{{.Name}} {{.Version}}; {{end}}') $(DOCKER_HOST=unix://$DIR/$s.sock docker info --format '{{json .DriverStatus}}' 2>/dev/null)" >&2
  done
  for _ in $(seq 100); do
    nsenter --net=/run/netns/"$ns" curl -fs http://127.0.0.1:5000/v2/ >/dev/null 2>&1 && break
    sleep 0.1
  done
  nsenter --net=/run/netns/"$ns" curl -fs http://127.0.0.1:5000/v2/ >/dev/null || { cat "$DIR/hub-registry.log" >&2; exit 1; }
  for _ in $(seq 100); do
    nsenter --net=/run/netns/"dosf${id}1" curl -fs http://127.0.0.1:5000/v2/ >/dev/null 2>&1 && break
    sleep 0.1
  done
  nsenter --net=/run/netns/"dosf${id}1" curl -fs http://127.0.0.1:5000/v2/ >/dev/null || { cat "$DIR/f1-registry.log" >&2; exit 1; }
  for _ in $(seq 100); do
    ssh -F "$DIR/ssh_config" remote true 2>/dev/null && break
    sleep 0.1
  done
  ssh -F "$DIR/ssh_config" remote true
  for ((k = 1; k <= FAN_HOSTS; k++)); do
    for _ in $(seq 100); do ssh -F "$DIR/ssh_config" "f$k" true 2>/dev/null && break; sleep 0.1; done
    ssh -F "$DIR/ssh_config" "f$k" true
  done

  cat >"$DIR/env" <<ENV
export DOS_TEST_DIR=$DIR
export DOS_TEST_BIN_DIR=$BIN_DIR
export DOS_TEST_LOCAL=unix://$DIR/local.sock
export DOS_TEST_PEER=unix://$DIR/peer.sock
export DOS_TEST_REMOTE=unix://$DIR/remote.sock
export DOS_TEST_SSH_CONFIG=$DIR/ssh_config
export DOS_TEST_NETNS=$ns
export DOS_TEST_LINK=$lif
export DOS_TEST_REMOTE_LINK=$rif
export DOS_TEST_REMOTE_IP=$rip
export DOS_TEST_DETACHED=tcp://$rip:2375
export DOS_TEST_LOCAL_IP=$lip
export DOS_TEST_BUSYBOX=/bin/busybox
export DOS_TEST_TINY=unix://$DIR/tiny.sock
export DOS_TEST_TINY_ROOT=$DIR/tiny
export DOS_TEST_RESTARTABLE=unix://$DIR/rst.sock
export DOS_TEST_C_LOCAL=unix://$DIR/c-local.sock
export DOS_TEST_C_REMOTE=unix://$DIR/c-remote.sock
export DOS_TEST_PODMAN=unix://$DIR/podman.sock
export DOS_TEST_HUB_REGISTRY=127.0.0.1:5000
export DOS_TEST_FAN_HOSTS=$FAN_HOSTS
export DOS_TEST_FAN_SWITCH=dosw$id
export DOS_TEST_FAN_PORTS=dosp$id
export DOS_TEST_FAN_UPLINK=dosu$id
export DOS_TEST_PODMAN_STORE="--root $DIR/podman-root --runroot $DIR/podman-run"
# Resume spools and what the capture registry learns inside DIR, not in
# the user's cache.
export DOS_SPOOL_DIR=$DIR/spool-local
export XDG_CACHE_HOME=$DIR/cache-local
ENV
  echo "env.sh: up in $DIR" >&2
}

down() {
  [[ -d $DIR ]] || return 0
  fan_down
  for p in sshd hub-registry local peer remote tiny rst c-local c-remote podman c-local-ctd c-remote-ctd; do
    [[ -f $DIR/$p.pid ]] && kill "$(cat "$DIR/$p.pid")" 2>/dev/null || true
  done
  for p in local peer remote tiny rst c-local c-remote podman c-local-ctd c-remote-ctd; do
    local pid; pid=$(cat "$DIR/$p.pid" 2>/dev/null || true)
    [[ -n $pid ]] || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [[ -f $DIR/netns ]]; then
    read -r ns lif <"$DIR/netns"
    ip link del "$lif" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  fi
  # Daemons leave mounts under their data roots.
  grep " $DIR/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$DIR"
}

# Stop daemon NAME (started here, in this network namespace) and start it
# again, as a host's docker restarting would.
restart() {
  local name=${NAME:?usage: env.sh restart DIR NAME}
  local pid; pid=$(cat "$DIR/$name.pid")
  kill "$pid"
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  start_dockerd "$name"
  wait_daemon "$DIR/$name.sock" "$DIR/$name.log"
}

# Shape the link both ways with tbf (this kernel has no netem), or remove
# the shaping with RATE "none".
shape() {
  local rate=${RATE:?RATE is required}
  read -r ns lif <"$DIR/netns"
  local rif=dosr${lif#dosl}
  if [[ $rate == none ]]; then
    tc qdisc del dev "$lif" root 2>/dev/null || true
    ip netns exec "$ns" tc qdisc del dev "$rif" root 2>/dev/null || true
  else
    tc qdisc replace dev "$lif" root tbf rate "$rate" burst 32kb latency 2s
    ip netns exec "$ns" tc qdisc replace dev "$rif" root tbf rate "$rate" burst 32kb latency 2s
  fi
}

HERE=$(cd "$(dirname "$0")" && pwd)
cmd=${1:?usage: env.sh up|down DIR}
DIR=${2:?usage: env.sh up|down DIR}
NAME=${3:-}
FAN_HOSTS=${FAN_HOSTS:-3}
BIN_DIR=${BIN_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target/debug}
"$cmd"
