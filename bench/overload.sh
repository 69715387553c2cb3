#!/usr/bin/env bash
# Flow control under overload (issue 7, item 5): publishers at full speed against a consumer
# held to a slow rate, with the broker's memory high watermark set low, so the backlog hits the
# watermark. Prints, per scenario, how fast the publisher was let through, the broker's RSS at
# the start and at its peak (the bench samples it every 100 ms), and how many of the
# once-a-second RSS samples were above the watermark.
#
#   bench/overload.sh                         # 20 s per scenario, 256 MiB watermark
#   WATERMARK_MIB=128 DURATION=30 bench/overload.sh
#   SCENARIOS="mqtt --qos 1" bench/overload.sh
#
# The broker listens on ports the OS chooses (read back from --ports-file), so runs beside other
# brokers cannot clash. The per-second RSS samples (seconds since start, RSS in KiB) are kept in
# $WORK/rss-<n>.tsv, one file per scenario, the bench's stderr in $WORK/bench-<n>.err, and the
# directory is printed at the end.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-20}
WATERMARK_MIB=${WATERMARK_MIB:-256}
SIZE=${SIZE:-1024}
CONSUMER_RATE=${CONSUMER_RATE:-2000}
BIN=${BIN:-target/release/switchboard}
SCENARIOS=${SCENARIOS:-"amqp;stomp;mqtt --qos 0;mqtt --qos 1"}
WORK=$(mktemp -d /tmp/switchboard-overload.XXXXXX)

# A fresh broker per scenario, so one run's backlog does not hold the alarm for the next.
start_broker() {
    rm -rf "$WORK/data" "$WORK/ports.json"
    SWITCHBOARD_SERVER_DATA_DIR=$WORK/data \
    SWITCHBOARD_SERVER_MEMORY_HIGH_WATERMARK_BYTES=$((WATERMARK_MIB << 20)) \
    SWITCHBOARD_SERVER_DISK_FREE_LIMIT_BYTES=0 \
    SWITCHBOARD_AMQP_LISTEN='["127.0.0.1:0"]' \
    SWITCHBOARD_STOMP_LISTEN='["127.0.0.1:0"]' \
    SWITCHBOARD_MQTT_LISTEN='["127.0.0.1:0"]' \
    SWITCHBOARD_MQTT_WS_LISTEN='[]' SWITCHBOARD_STOMP_WS_LISTEN='[]' \
    SWITCHBOARD_HTTP_LISTEN='["127.0.0.1:0"]' \
    SWITCHBOARD_PROMETHEUS_LISTEN='["127.0.0.1:0"]' \
    SWITCHBOARD_LOG=warn \
        "$BIN" serve --ports-file "$WORK/ports.json" >>"$WORK/switchboard.log" 2>&1 &
    PID=$!
    local end=$((SECONDS + 30))
    until [[ -s $WORK/ports.json ]]; do
        ((SECONDS < end)) || { echo "switchboard did not start" >&2; exit 1; }
        sleep 0.2
    done
    read -r AMQP_ADDR STOMP_ADDR MQTT_ADDR < <(python3 -c '
import json, sys
p = json.load(open(sys.argv[1]))
print(p["amqp"][0], p["stomp"][0], p["mqtt"][0])' "$WORK/ports.json")
}

# Writes "seconds RSS-KiB" once a second until the broker exits.
sample_rss() {
    local pid=$1 out=$2 t=0 kib
    while kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) && [[ -n $kib ]]; do
        echo "$t $kib" >>"$out"
        sleep 1
        t=$((t + 1))
    done
}

stop_broker() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=
    if [[ -n $SAMPLER ]]; then
        wait "$SAMPLER" 2>/dev/null || true
        SAMPLER=
    fi
}
PID=
SAMPLER=
trap '[[ -n $PID ]] && stop_broker' EXIT

echo "watermark ${WATERMARK_MIB} MiB, ${SIZE} B messages, consumer held to ${CONSUMER_RATE} msg/s, ${DURATION} s"
echo "| scenario | published | publish rate msg/s | consumed | broker RSS start / peak MiB | 1 s samples over the watermark |"
echo "|---|---|---|---|---|---|"
n=0
IFS=';' read -ra scenarios <<<"$SCENARIOS"
for scenario in "${scenarios[@]}"; do
    n=$((n + 1))
    start_broker
    rss_file=$WORK/rss-$n.tsv
    sample_rss "$PID" "$rss_file" &
    SAMPLER=$!
    # shellcheck disable=SC2086 # scenario holds words
    if ! out=$("$BIN" bench $scenario --size "$SIZE" --duration "$DURATION" --consumer-rate "$CONSUMER_RATE" \
        --max-in-flight 0 --queue "overload-$n" --json --broker-pid "$PID" \
        --amqp-addr "$AMQP_ADDR" --stomp-addr "$STOMP_ADDR" --mqtt-addr "$MQTT_ADDR" 2>"$WORK/bench-$n.err"); then
        stop_broker
        echo "| $scenario | the bench failed: $(grep -m1 -E 'panicked|rror' "$WORK/bench-$n.err") (all of it in $WORK/bench-$n.err) |"
        continue
    fi
    stop_broker
    python3 - "$out" "$scenario" "$rss_file" "$WATERMARK_MIB" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
b = r["broker"]
samples = [int(line.split()[1]) for line in open(sys.argv[3]) if line.strip()]
over = sum(1 for kib in samples if kib > int(sys.argv[4]) << 10)
print(f"| {sys.argv[2]} | {r['published']:,} | {r['publish_rate']:,.0f} | {r['consumed']:,} "
      f"| {b['rss_start_bytes'] >> 20} / {b['rss_peak_bytes'] >> 20} | {over} of {len(samples)} |")
PY
done
echo "per-second RSS samples: $WORK/rss-*.tsv"
