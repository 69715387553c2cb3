#!/usr/bin/env bash
# What a cluster costs an MQTT flow: `switchboard bench mqtt` (one v5 publisher, one
# subscriber, 16 B, 1,000 in flight) through node 1 of a 3-node Switchboard cluster and on a
# single node, for QoS 1 and QoS 2, with clean sessions and with sessions the broker keeps
# (`--persistent`: clustered, a kept session's QoS 2 packet ids are committed to the cluster
# before PUBREC / PUBREL / PUBCOMP). msg/s consumed, broker CPU-s per million (summed over
# the nodes), peak RSS per node; medians over the rounds.
#
#   bench/mqtt_cluster.sh                      # 3 rounds of 10 s
#   bench/mqtt_cluster.sh --rounds 1 --duration 5 --out results.jsonl
#
# Needs a release build (BIN= another binary). Ports are fixed and away from the standard
# ones: MQTT 36721-36724, AMQP 36731-36734, HTTP 36741-36744, cluster 36751-36753. Every
# broker started here is stopped on exit and its data removed.
set -euo pipefail
export RUST_BACKTRACE=0

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROUNDS=3
DURATION=10
OUT=
while (($#)); do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
BIN=${BIN:-target/release/switchboard}
WORK=$(mktemp -d /tmp/sb-mqtt-cluster.XXXXXX)
OUT=${OUT:-$WORK.jsonl}
declare -A PID

log() { echo "[$(date +%T)] $*" >&2; }

cleanup() {
    local p
    for p in "${PID[@]}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Starts node i; $2: "cluster" (node of three, seeds node 1) or "single".
start_node() {
    local i=$1 mode=$2 seeds='[]' listen=''
    if [[ $mode == cluster ]]; then
        listen="127.0.0.1:3675$i"
        [[ $i == 1 ]] || seeds='["127.0.0.1:36751"]'
    fi
    env SWITCHBOARD_SERVER_DATA_DIR="$WORK/node$i" \
        SWITCHBOARD_MQTT_LISTEN="[\"127.0.0.1:3672$i\"]" SWITCHBOARD_AMQP_LISTEN="[\"127.0.0.1:3673$i\"]" \
        SWITCHBOARD_HTTP_LISTEN="[\"127.0.0.1:3674$i\"]" SWITCHBOARD_STOMP_LISTEN='[]' \
        SWITCHBOARD_MQTT_WS_LISTEN='[]' SWITCHBOARD_STOMP_WS_LISTEN='[]' SWITCHBOARD_PROMETHEUS_LISTEN='[]' \
        SWITCHBOARD_CLUSTER_NODE_NAME="mqttbench$i@local" SWITCHBOARD_CLUSTER_LISTEN="$listen" \
        SWITCHBOARD_CLUSTER_SEEDS="$seeds" SWITCHBOARD_CLUSTER_COOKIE=mqtt-bench \
        SWITCHBOARD_LOG=warn "$BIN" serve >>"$WORK/node$i.log" 2>&1 &
    PID[$i]=$!
    wait_port "127.0.0.1:3672$i" 60 || { log "node $i did not start"; exit 1; }
}

stop_all() {
    local i
    for i in "${!PID[@]}"; do
        kill "${PID[$i]}" 2>/dev/null || true
        wait "${PID[$i]}" 2>/dev/null || true
        unset "PID[$i]"
    done
    rm -rf "$WORK"/node*
}

# run LABEL ROUND ARGS...: one bench run through node 1, its JSON appended to $OUT.
run() {
    local label=$1 round=$2 pids=() p
    shift 2
    for p in "${PID[@]}"; do pids+=(--broker-pid "$p"); done
    log "$label, round $round"
    "$BIN" bench mqtt --mqtt-addr 127.0.0.1:36721 --mqtt-version 5 --publishers 1 --consumers 1 \
        --size 16 --confirm 1000 --duration "$DURATION" "${pids[@]}" --json "$@" |
        python3 -c '
import json, os, sys
r = json.loads(sys.stdin.read())
r.update(label=sys.argv[1], round=int(sys.argv[2]), loadavg=os.getloadavg()[0])
print(json.dumps(r))' "$label" "$round" >>"$OUT"
}

scenarios() {
    local where=$1 round=$2
    run "$where, QoS 1 clean" "$round" --qos 1
    run "$where, QoS 1 kept" "$round" --qos 1 --persistent
    run "$where, QoS 2 clean" "$round" --qos 2
    run "$where, QoS 2 kept" "$round" --qos 2 --persistent
}

for round in $(seq 1 "$ROUNDS"); do
    for i in 1 2 3; do start_node "$i" cluster; done
    await_three_nodes 127.0.0.1:36741 120 || { log "the cluster did not form"; exit 1; }
    scenarios "3 nodes" "$round"
    stop_all
    start_node 1 single
    scenarios "single node" "$round"
    stop_all
done

python3 - "$OUT" <<'EOF'
import json, statistics, sys
from collections import OrderedDict
rows = OrderedDict()
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["label"], []).append(r)
med = statistics.median
print("| scenario | runs | msg/s | latency p50 / p99 µs | broker CPU-s per million | peak RSS MiB per node | missing / dup | load avg |")
print("|---|---|---|---|---|---|---|---|")
for label, rs in rows.items():
    nodes = [r["broker"].get("nodes") or [r["broker"]] for r in rs]
    rss = [med([n[k]["rss_peak_bytes"] for n in nodes if k < len(n)]) for k in range(max(map(len, nodes)))]
    print(f"| {label} | {len(rs)} | {med([r['consume_rate'] for r in rs]):,.0f} "
          f"| {med([r['latency']['p50_us'] for r in rs]):.0f} / {med([r['latency']['p99_us'] for r in rs]):.0f} "
          f"| {med([r['broker']['cpu_seconds_per_million'] for r in rs]):.2f} "
          f"| {' / '.join(format(x / 2**20, '.0f') for x in rss)} "
          f"| {sum(r['missing'] for r in rs)} / {sum(r['duplicates'] for r in rs)} "
          f"| {med([r['loadavg'] for r in rs]):.1f} |")
print(f"raw: {sys.argv[1]}", file=sys.stderr)
EOF
