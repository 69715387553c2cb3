#!/usr/bin/env bash
# Runs the same `switchboard bench` scenarios against Switchboard, RabbitMQ and Mosquitto on
# 127.0.0.1 (non-standard ports), alternating brokers within each round, and prints a table of
# median msg/s and broker CPU-seconds per million messages with Switchboard's ratios.
#
#   bench/compare.sh                     # 3 rounds of 5 s runs
#   ROUNDS=5 DURATION=10 bench/compare.sh
#   ONLY='MQTT 3.1.1 QoS [01]' BROKERS='switchboard mosquitto rumqttd' CONNECTIONS=0 bench/compare.sh
#
# ONLY (an extended regular expression) keeps the scenarios whose label matches it; BROKERS
# names the brokers to start (default: every one installed); CONNECTIONS=0 skips the idle
# connections run.
#
# Needs a release build (`cargo build --release`); RabbitMQ (Debian `rabbitmq-server`, the
# rabbitmq_mqtt and rabbitmq_stomp plugins are enabled here), Mosquitto and rumqttd ($RUMQTTD,
# default ~/.cache/rumqttd/bin/rumqttd: `cargo install rumqttd --version 0.20.0 --root
# ~/.cache/rumqttd`; its --locked dependencies no longer build) are used when installed and
# skipped otherwise. Every broker started here is stopped on exit. Results go to
# $WORK/results.jsonl (one bench JSON object per line, with "target" (the broker) and "label" added).
set -euo pipefail
export RUST_BACKTRACE=0

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
BIN=${BIN:-target/release/switchboard}
WORK=$(mktemp -d /tmp/switchboard-compare.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"

# name amqp stomp mqtt pid
declare -A AMQP STOMP MQTT PID KEEP_ALIVE
EPMD_PID=

log() { echo "compare: $*" >&2; }

# shellcheck source=bench/lib.sh
. bench/lib.sh

start_switchboard() {
    [[ -x $BIN ]] || { log "no $BIN: run cargo build --release"; exit 1; }
    AMQP[switchboard]=127.0.0.1:5692
    STOMP[switchboard]=127.0.0.1:61633
    MQTT[switchboard]=127.0.0.1:1903
    SWITCHBOARD_SERVER_DATA_DIR=$WORK/switchboard-data \
    SWITCHBOARD_AMQP_LISTEN="[\"${AMQP[switchboard]}\"]" \
    SWITCHBOARD_STOMP_LISTEN="[\"${STOMP[switchboard]}\"]" \
    SWITCHBOARD_MQTT_LISTEN="[\"${MQTT[switchboard]}\"]" \
    SWITCHBOARD_MQTT_WS_LISTEN='[]' SWITCHBOARD_STOMP_WS_LISTEN='[]' \
    SWITCHBOARD_HTTP_LISTEN='["127.0.0.1:15692"]' \
    SWITCHBOARD_PROMETHEUS_LISTEN="[]" \
    SWITCHBOARD_LOG=warn \
        "$BIN" serve >"$WORK/switchboard.log" 2>&1 &
    PID[switchboard]=$!
    wait_port "${AMQP[switchboard]}" 30 || { log "switchboard did not start"; exit 1; }
}

start_rabbitmq() {
    local dir=$WORK/rabbitmq
    mkdir -p "$dir"
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:5682
mqtt.listeners.tcp.default = 127.0.0.1:1893
stomp.listeners.tcp.1 = 127.0.0.1:61623
loopback_users.guest = true
CONF
    run_rabbitmq sbcompare@localhost "$dir" "[rabbitmq_mqtt,rabbitmq_stomp]"
    AMQP[rabbitmq]=127.0.0.1:5682
    STOMP[rabbitmq]=127.0.0.1:61623
    MQTT[rabbitmq]=127.0.0.1:1893
}

start_mosquitto() {
    cat >"$WORK/mosquitto.conf" <<CONF
listener 1913 127.0.0.1
allow_anonymous true
max_queued_messages 100000
CONF
    mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    PID[mosquitto]=$!
    MQTT[mosquitto]=127.0.0.1:1913
    wait_port "${MQTT[mosquitto]}" 10 || { log "mosquitto did not start"; exit 1; }
}

start_rumqttd() {
    # In memory, MQTT 3.1.1 only; it refuses a keep alive of 0, and the bench sends no
    # PINGREQ, so the bench asks for one longer than any run.
    cat >"$WORK/rumqttd.toml" <<CONF
id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:1933"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
CONF
    "$RUMQTTD" -q -c "$WORK/rumqttd.toml" >"$WORK/rumqttd.log" 2>&1 &
    PID[rumqttd]=$!
    MQTT[rumqttd]=127.0.0.1:1933
    KEEP_ALIVE[rumqttd]=900
    wait_port "${MQTT[rumqttd]}" 10 || { log "rumqttd did not start"; exit 1; }
}

stop_all() { stop_brokers sbcompare@localhost; }
trap stop_all EXIT

# Each idle connection is a descriptor in the broker and in the bench.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
BROKERS=${BROKERS:-switchboard mosquitto rumqttd rabbitmq}
wanted() { [[ " $BROKERS " == *" $1 "* ]]; }
wanted switchboard && start_switchboard
if wanted mosquitto; then
    command -v mosquitto >/dev/null && start_mosquitto || log "mosquitto not installed: skipped"
fi
RUMQTTD=${RUMQTTD:-$HOME/.cache/rumqttd/bin/rumqttd}
if wanted rumqttd; then
    [[ -x $RUMQTTD ]] && start_rumqttd || log "rumqttd not installed: skipped"
fi
if wanted rabbitmq; then
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] && start_rabbitmq || log "rabbitmq-server not installed: skipped"
fi

# label | brokers | bench arguments
SCENARIOS=(
    "AMQP 16 B, 1 -> 1, auto-ack|switchboard rabbitmq|amqp --size 16"
    "AMQP 1 KiB, 1 -> 1, auto-ack|switchboard rabbitmq|amqp --size 1024"
    "AMQP 16 B persistent, confirms (1000), manual ack (200)|switchboard rabbitmq|amqp --persistent --confirm 1000 --manual-ack 200 --queue switchboard-bench-durable"
    "AMQP fan-out 1 -> 10, 16 B|switchboard rabbitmq|amqp-fanout --consumers 10"
    "AMQP 16 B at 1,000 msg/s (latency)|switchboard rabbitmq|amqp --rate 1000"
    "STOMP 16 B, ack auto|switchboard rabbitmq|stomp"
    "STOMP 16 B, client-individual (200), receipts (1000)|switchboard rabbitmq|stomp --manual-ack 200 --confirm 1000"
    "AMQP -> STOMP, 16 B|switchboard rabbitmq|cross --from amqp --to stomp"
    "STOMP -> AMQP, 16 B|switchboard rabbitmq|cross --from stomp --to amqp"
    "MQTT 3.1.1 QoS 0, 16 B, 1 -> 1|switchboard mosquitto rumqttd rabbitmq|mqtt --qos 0 --max-in-flight 10000"
    "MQTT 3.1.1 QoS 1, 16 B, 1 -> 1|switchboard mosquitto rumqttd rabbitmq|mqtt --qos 1 --max-in-flight 10000"
    "MQTT 3.1.1 QoS 2, 16 B, 1 -> 1, 20 in flight|switchboard mosquitto|mqtt --qos 2 --confirm 20 --max-in-flight 10000"
    "MQTT 5 QoS 1, 16 B, 1 -> 1|switchboard mosquitto|mqtt --qos 1 --mqtt-version 5 --max-in-flight 10000"
    "MQTT QoS 0 fan-out 1 -> 100, 16 B|switchboard mosquitto rabbitmq|mqtt --qos 0 --consumers 100 --max-in-flight 100000"
    "MQTT QoS 1 fan-out 1 -> 100, 16 B|switchboard mosquitto|mqtt --qos 1 --consumers 100 --max-in-flight 100000"
    "MQTT QoS 0 at 1,000 msg/s (latency)|switchboard mosquitto rumqttd rabbitmq|mqtt --qos 0 --rate 1000"
    "MQTT -> AMQP, QoS 1|switchboard rabbitmq|cross --from mqtt --to amqp --qos 1 --max-in-flight 10000"
    "AMQP -> MQTT, QoS 1|switchboard rabbitmq|cross --from amqp --to mqtt --qos 1 --max-in-flight 10000"
    "STOMP -> MQTT, QoS 1|switchboard rabbitmq|cross --from stomp --to mqtt --qos 1 --max-in-flight 10000"
)
# Idle connections: N MQTT connections with one subscription each (connect rate, RSS each).
CONNECTIONS=${CONNECTIONS:-10000}
if [[ -n ${EXTRA_SCENARIOS_FILE:-} ]]; then
    mapfile -t -O "${#SCENARIOS[@]}" SCENARIOS <"$EXTRA_SCENARIOS_FILE"
fi

for round in $(seq "$ROUNDS"); do
    for s in "${SCENARIOS[@]}"; do
        IFS='|' read -r label brokers args <<<"$s"
        [[ -z ${ONLY:-} || $label =~ $ONLY ]] || continue
        for b in $brokers; do
            [[ -n ${PID[$b]:-} ]] || continue
            log "round $round: $b: $label"
            # shellcheck disable=SC2086 # args are words
            if out=$("$BIN" bench $args --duration "$DURATION" --json --broker-pid "${PID[$b]}" \
                --amqp-addr "${AMQP[$b]:-127.0.0.1:1}" --stomp-addr "${STOMP[$b]:-127.0.0.1:1}" \
                --mqtt-addr "${MQTT[$b]:-127.0.0.1:1}" --keep-alive "${KEEP_ALIVE[$b]:-0}" 2>"$WORK/last.err"); then
                python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["target"]=sys.argv[2]; r["label"]=sys.argv[3]; r["round"]=int(sys.argv[4]); print(json.dumps(r))' \
                    "$out" "$b" "$label" "$round" >>"$RESULTS"
            else
                log "  failed: $(grep -m1 "^Error" "$WORK/last.err")"
            fi
        done
    done
done

for b in switchboard mosquitto rabbitmq; do
    [[ -n ${PID[$b]:-} ]] && ((CONNECTIONS > 0)) || continue
    log "$b: $CONNECTIONS idle MQTT connections"
    if out=$("$BIN" bench mqtt --connections "$CONNECTIONS" --json --broker-pid "${PID[$b]}" \
        --mqtt-addr "${MQTT[$b]}" 2>"$WORK/last.err"); then
        python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["target"]=sys.argv[2]; print(json.dumps(r))' \
            "$out" "$b" >>"$WORK/connections.jsonl"
    else
        log "  failed: $(grep -m1 "^Error" "$WORK/last.err")"
    fi
done

python3 bench/table.py "$RESULTS"
[[ -s $WORK/connections.jsonl ]] && python3 bench/table.py --connections "$WORK/connections.jsonl"
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); results: $RESULTS"
