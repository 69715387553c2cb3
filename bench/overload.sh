#!/usr/bin/env bash
# Flow control under overload (issue 7, item 5): publishers at full speed against a consumer
# held to a slow rate, with the broker's memory high watermark set low, so the backlog hits the
# watermark. Prints, per protocol, how fast the publisher was let through and the broker's
# peak RSS next to the watermark.
#
#   bench/overload.sh                         # 20 s per protocol, 256 MiB watermark
#   WATERMARK_MIB=128 DURATION=30 bench/overload.sh
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-20}
WATERMARK_MIB=${WATERMARK_MIB:-256}
SIZE=${SIZE:-1024}
CONSUMER_RATE=${CONSUMER_RATE:-2000}
BIN=${BIN:-target/release/switchboard}
WORK=$(mktemp -d /tmp/switchboard-overload.XXXXXX)

# A fresh broker per protocol, so one run's backlog does not hold the alarm for the next.
start_broker() {
    rm -rf "$WORK/data"
    SWITCHBOARD_SERVER_DATA_DIR=$WORK/data \
    SWITCHBOARD_SERVER_MEMORY_HIGH_WATERMARK_BYTES=$((WATERMARK_MIB << 20)) \
    SWITCHBOARD_AMQP_LISTEN='["127.0.0.1:5712"]' \
    SWITCHBOARD_STOMP_LISTEN='["127.0.0.1:61653"]' \
    SWITCHBOARD_MQTT_LISTEN='["127.0.0.1:1933"]' \
    SWITCHBOARD_HTTP_LISTEN='["127.0.0.1:15712"]' \
    SWITCHBOARD_LOG=warn \
        "$BIN" serve >>"$WORK/switchboard.log" 2>&1 &
    PID=$!
    local end=$((SECONDS + 30))
    until (exec 3<>/dev/tcp/127.0.0.1/5712) 2>/dev/null; do
        ((SECONDS < end)) || { echo "switchboard did not start" >&2; exit 1; }
        sleep 0.2
    done
}

stop_broker() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=
}
PID=
trap '[[ -n $PID ]] && stop_broker' EXIT

echo "watermark ${WATERMARK_MIB} MiB, ${SIZE} B messages, consumer held to ${CONSUMER_RATE} msg/s, ${DURATION} s"
echo "| protocol | published | publish rate msg/s | consumed | broker RSS start / peak MiB |"
echo "|---|---|---|---|---|"
for scenario in "amqp" "stomp" "mqtt --qos 0"; do
    start_broker
    # shellcheck disable=SC2086 # scenario holds words
    out=$("$BIN" bench $scenario --size "$SIZE" --duration "$DURATION" --consumer-rate "$CONSUMER_RATE" \
        --max-in-flight 0 --queue "overload-${scenario%% *}" --json --broker-pid "$PID" \
        --amqp-addr 127.0.0.1:5712 --stomp-addr 127.0.0.1:61653 --mqtt-addr 127.0.0.1:1933)
    python3 - "$out" "$scenario" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
b = r["broker"]
print(f"| {sys.argv[2]} | {r['published']:,} | {r['publish_rate']:,.0f} | {r['consumed']:,} "
      f"| {b['rss_start_bytes'] >> 20} / {b['rss_peak_bytes'] >> 20} |")
PY
    stop_broker
done
