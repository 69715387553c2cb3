#!/usr/bin/env bash
# MQTT throughput over WebSocket beside plain TCP: `switchboard bench mqtt` without and with
# `--ws` against Switchboard (its Web MQTT listener) and Mosquitto (a `protocol websockets`
# listener), alternating within each round, on 127.0.0.1 (non-standard ports); the table is
# bench/table.py's (median msg/s, broker CPU-seconds per million messages).
#
#   bench/ws_mqtt.sh                     # 3 rounds of 5 s runs
#   ROUNDS=5 DURATION=10 bench/ws_mqtt.sh
#
# Needs a release build (`cargo build --release`); Mosquitto is used when installed. Every
# broker started here is stopped on exit.
set -euo pipefail
export RUST_BACKTRACE=0

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
BIN=${BIN:-target/release/switchboard}
WORK=$(mktemp -d /tmp/switchboard-ws.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"

declare -A TCP WS PID
log() { echo "ws_mqtt: $*" >&2; }

# shellcheck source=bench/lib.sh
. bench/lib.sh

[[ -x $BIN ]] || { log "no $BIN: run cargo build --release"; exit 1; }
TCP[switchboard]=127.0.0.1:1904
WS[switchboard]=127.0.0.1:15705
SWITCHBOARD_SERVER_DATA_DIR=$WORK/switchboard-data \
SWITCHBOARD_AMQP_LISTEN='[]' SWITCHBOARD_STOMP_LISTEN='[]' SWITCHBOARD_STOMP_WS_LISTEN='[]' \
SWITCHBOARD_MQTT_LISTEN="[\"${TCP[switchboard]}\"]" \
SWITCHBOARD_MQTT_WS_LISTEN="[\"${WS[switchboard]}\"]" \
SWITCHBOARD_HTTP_LISTEN='[]' SWITCHBOARD_PROMETHEUS_LISTEN='[]' SWITCHBOARD_LOG=warn \
    "$BIN" serve >"$WORK/switchboard.log" 2>&1 &
PID[switchboard]=$!

if command -v mosquitto >/dev/null; then
    TCP[mosquitto]=127.0.0.1:1914
    WS[mosquitto]=127.0.0.1:15715
    cat >"$WORK/mosquitto.conf" <<CONF
listener ${TCP[mosquitto]#*:} 127.0.0.1
listener ${WS[mosquitto]#*:} 127.0.0.1
protocol websockets
allow_anonymous true
max_queued_messages 100000
CONF
    mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    PID[mosquitto]=$!
else
    log "mosquitto not installed: skipped"
fi

stop_all() {
    for b in "${!PID[@]}"; do
        kill "${PID[$b]}" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK/switchboard-data"
}
trap stop_all EXIT

for b in "${!PID[@]}"; do
    wait_port "${TCP[$b]}" 30 && wait_port "${WS[$b]}" 30 || { log "$b did not start"; exit 1; }
done

# label | bench arguments
SCENARIOS=(
    "MQTT 3.1.1 QoS 0, 16 B, 1 -> 1|--qos 0 --max-in-flight 10000"
    "MQTT 3.1.1 QoS 1, 16 B, 1 -> 1|--qos 1 --max-in-flight 10000"
    "MQTT 3.1.1 QoS 0, 1 KiB, 1 -> 1|--qos 0 --size 1024 --max-in-flight 10000"
)

for round in $(seq "$ROUNDS"); do
    for s in "${SCENARIOS[@]}"; do
        IFS='|' read -r label args <<<"$s"
        for transport in tcp ws; do
            for b in switchboard mosquitto; do
                [[ -n ${PID[$b]:-} ]] || continue
                if [[ $transport == ws ]]; then addr=${WS[$b]} flag=--ws; else addr=${TCP[$b]} flag=; fi
                log "round $round: $b: $label over $transport"
                # shellcheck disable=SC2086 # args are words
                if out=$("$BIN" bench mqtt $args $flag --duration "$DURATION" --json \
                    --broker-pid "${PID[$b]}" --mqtt-addr "$addr" 2>"$WORK/last.err"); then
                    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["target"]=sys.argv[2]; r["label"]=sys.argv[3]; r["round"]=int(sys.argv[4]); print(json.dumps(r))' \
                        "$out" "$b" "$label, $transport" "$round" >>"$RESULTS"
                else
                    log "  failed: $(grep -m1 "^Error" "$WORK/last.err")"
                fi
            done
        done
    done
done

python3 bench/table.py "$RESULTS"
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average: $(cut -d' ' -f1-3 /proc/loadavg); results: $RESULTS"
