#!/usr/bin/env bash
# Loxilight demo: a client, a load balancer and two backends in network namespaces.
# The LB namespace runs loxilight with one rule, 20.20.20.1:2020/tcp -> backends:8080
# (round robin); the client sends HTTP requests to the VIP and we count who answered.
# Needs root. Binaries come from $BIN_DIR (default: target/debug, see `make build`).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN_DIR=${BIN_DIR:-$ROOT/target/debug}
LOXILIGHT=$BIN_DIR/loxilight
LOXICMD=$BIN_DIR/loxicmd
REQUESTS=${REQUESTS:-20}
VIP=20.20.20.1
PORT=2020

die() { echo "demo: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "needs root (network namespaces and eBPF)"
for bin in "$LOXILIGHT" "$LOXICMD"; do
    [[ -x $bin ]] || die "$bin not found: run 'make build' first"
done

ID=$$
CLIENT=lld-$ID-c
LB=lld-$ID-l
BACKENDS=(b1 b2)
PIN_DIR=/sys/fs/bpf/loxilight-demo-$ID
WORK=$(mktemp -d /tmp/loxilight-demo.XXXXXX)
PIDS=()
DAEMON=

cleanup() {
    set +e
    [[ -n $DAEMON ]] && kill -TERM "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    for ns in "$CLIENT" "$LB" "${BACKENDS[@]/#/lld-$ID-}"; do
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$PIN_DIR" "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_lb() { nsenter --net="/run/netns/$LB" -- "$@"; }
loxicmd() { in_lb "$LOXICMD" "$@"; }

# ns  ns-ifname  lb-ifname  subnet: a veth pair between ns and the LB, 10.77.<subnet>.0/24.
wire() {
    local ns=$1 lb_if=$2 subnet=$3
    ip -n "$ns" link add eth0 type veth peer name "$lb_if" netns "$LB"
    ip -n "$ns" addr add "10.77.$subnet.2/24" dev eth0
    ip -n "$LB" addr add "10.77.$subnet.1/24" dev "$lb_if"
    ip -n "$ns" link set eth0 up
    ip -n "$LB" link set "$lb_if" up
    ip -n "$ns" route add default via "10.77.$subnet.1"
}

echo "== building the lab (namespaces $CLIENT, $LB, lld-$ID-b1, lld-$ID-b2)"
for ns in "$CLIENT" "$LB" "${BACKENDS[@]/#/lld-$ID-}"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
ip netns exec "$LB" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
wire "$CLIENT" veth-c 1
ENDPOINTS=()
for i in "${!BACKENDS[@]}"; do
    name=${BACKENDS[$i]}
    subnet=$((i + 2))
    wire "lld-$ID-$name" "veth-$name" "$subnet"
    mkdir -p "$WORK/$name"
    echo "$name" >"$WORK/$name/index.html"
    ip netns exec "lld-$ID-$name" python3 -m http.server 8080 --bind "10.77.$subnet.2" \
        --directory "$WORK/$name" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    ENDPOINTS+=("10.77.$subnet.2:1")
done

echo "== starting loxilight in $LB"
in_lb "$LOXILIGHT" --pin-dir "$PIN_DIR" --state-dir "$WORK/state" --detach-on-exit \
    2>"$WORK/loxilight.log" &
DAEMON=$!
# Ready once it answers a request (the port is bound before the datapath is attached).
for _ in $(seq 100); do
    loxicmd get lb >/dev/null 2>&1 && break
    kill -0 "$DAEMON" 2>/dev/null || { cat "$WORK/loxilight.log" >&2; die "loxilight exited"; }
    sleep 0.1
done
loxicmd get lb >/dev/null 2>&1 || die "loxilight does not answer after 10 s"

# The backends' python servers take a moment to start.
for i in "${!BACKENDS[@]}"; do
    ip="10.77.$((i + 2)).2"
    for _ in $(seq 50); do
        ip netns exec "$CLIENT" curl -s --max-time 1 -o /dev/null "http://$ip:8080/" && break
        sleep 0.1
    done
done

echo "== loxicmd create lb $VIP --tcp=$PORT:8080 --endpoints=$(IFS=,; echo "${ENDPOINTS[*]}")"
loxicmd create lb "$VIP" --tcp="$PORT:8080" --endpoints="$(IFS=,; echo "${ENDPOINTS[*]}")"

echo "== $REQUESTS HTTP requests from the client to http://$VIP:$PORT/"
declare -A served=()
failed=0
for _ in $(seq "$REQUESTS"); do
    if answer=$(ip netns exec "$CLIENT" curl -s --fail --max-time 3 "http://$VIP:$PORT/"); then
        served[$answer]=$((${served[$answer]:-0} + 1))
    else
        failed=$((failed + 1))
    fi
done
for name in "${BACKENDS[@]}"; do
    echo "   $name served ${served[$name]:-0}"
done
echo "   failed: $failed"

echo "== loxicmd get lb -o wide"
loxicmd get lb -o wide
echo "== loxicmd get ct"
loxicmd get ct

[[ $failed -eq 0 ]] || die "$failed requests failed"
echo "== done, tearing down"
