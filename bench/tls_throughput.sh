#!/usr/bin/env bash
# Throughput over TLS: `switchboard bench --tls` against Switchboard's, RabbitMQ's and
# Mosquitto's TLS listeners on 127.0.0.1 (non-standard ports), AMQP 16 B 1 -> 1 and MQTT 3.1.1
# QoS 0 and QoS 1 16 B 1 -> 1, alternating brokers within each round; prints bench/table.py's
# table (median msg/s, broker CPU-s per million, latency) with Switchboard's ratios.
#
#   bench/tls_throughput.sh                   # 3 rounds of 5 s runs
#   ROUNDS=5 DURATION=10 bench/tls_throughput.sh
#
# A throwaway CA and a server certificate for IP 127.0.0.1 (ECDSA P-256) are made here with
# the openssl CLI; the bench trusts the CA (--ca-file). Needs a release build (`cargo build
# --release`); RabbitMQ (Debian `rabbitmq-server`, with rabbitmq_mqtt) and Mosquitto are used
# when installed and skipped otherwise. Every broker started here is stopped on exit. Results
# go to $WORK/results.jsonl (one bench JSON object per line, "target" and "label" added).
set -euo pipefail
export RUST_BACKTRACE=0

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
BIN=${BIN:-target/release/switchboard}
WORK=$(mktemp -d /tmp/switchboard-tls-throughput.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"

declare -A AMQP MQTT PID
EPMD_PID=

log() { echo "tls_throughput: $*" >&2; }

# shellcheck source=bench/lib.sh
. bench/lib.sh

start_switchboard() {
    [[ -x $BIN ]] || { log "no $BIN: run cargo build --release"; exit 1; }
    AMQP[switchboard]=127.0.0.1:5696
    MQTT[switchboard]=127.0.0.1:8896
    SWITCHBOARD_SERVER_DATA_DIR=$WORK/switchboard-data SWITCHBOARD_LOG=warn \
    SWITCHBOARD_AMQP_LISTEN='[]' SWITCHBOARD_AMQP_TLS_LISTEN="[\"${AMQP[switchboard]}\"]" \
    SWITCHBOARD_MQTT_LISTEN='[]' SWITCHBOARD_MQTT_TLS_LISTEN="[\"${MQTT[switchboard]}\"]" \
    SWITCHBOARD_MQTT_WS_LISTEN='[]' SWITCHBOARD_STOMP_LISTEN='[]' SWITCHBOARD_STOMP_WS_LISTEN='[]' \
    SWITCHBOARD_HTTP_LISTEN='[]' SWITCHBOARD_PROMETHEUS_LISTEN='[]' \
    SWITCHBOARD_TLS_CERT_FILE=$WORK/pki/server.pem SWITCHBOARD_TLS_KEY_FILE=$WORK/pki/server.key \
        "$BIN" serve >"$WORK/switchboard.log" 2>&1 &
    PID[switchboard]=$!
    wait_port "${AMQP[switchboard]}" 30 || { log "switchboard did not start"; exit 1; }
}

start_rabbitmq() {
    local dir=$WORK/rabbitmq
    mkdir -p "$dir"
    rabbitmq_tls_conf 5686 5697 1897 8897 "$WORK/pki" >"$dir/rabbitmq.conf"
    run_rabbitmq sbtls@localhost "$dir" "[rabbitmq_mqtt]"
    AMQP[rabbitmq]=127.0.0.1:5697
    MQTT[rabbitmq]=127.0.0.1:8897
    wait_port "${MQTT[rabbitmq]}" 60 || { log "rabbitmq's MQTT TLS listener did not start"; exit 1; }
}

start_mosquitto() {
    cat >"$WORK/mosquitto.conf" <<CONF
listener 8898 127.0.0.1
cafile $WORK/pki/ca.pem
certfile $WORK/pki/server.pem
keyfile $WORK/pki/server.key
allow_anonymous true
max_queued_messages 100000
CONF
    mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    PID[mosquitto]=$!
    MQTT[mosquitto]=127.0.0.1:8898
    wait_port "${MQTT[mosquitto]}" 10 || { log "mosquitto did not start"; exit 1; }
}

stop_all() { stop_brokers sbtls@localhost; }
trap stop_all EXIT

make_pki "$WORK/pki"
start_switchboard
command -v mosquitto >/dev/null && start_mosquitto || log "mosquitto not installed: skipped"
[[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] && start_rabbitmq || log "rabbitmq-server not installed: skipped"

# label | brokers | bench arguments
SCENARIOS=(
    "AMQP over TLS, 16 B, 1 -> 1, auto-ack|switchboard rabbitmq|amqp --size 16"
    "MQTT 3.1.1 over TLS, QoS 0, 16 B, 1 -> 1|switchboard mosquitto rabbitmq|mqtt --qos 0 --max-in-flight 10000"
    "MQTT 3.1.1 over TLS, QoS 1, 16 B, 1 -> 1|switchboard mosquitto rabbitmq|mqtt --qos 1 --max-in-flight 10000"
)

for round in $(seq "$ROUNDS"); do
    for s in "${SCENARIOS[@]}"; do
        IFS='|' read -r label brokers args <<<"$s"
        for b in $brokers; do
            [[ -n ${PID[$b]:-} ]] || continue
            log "round $round: $b: $label"
            # shellcheck disable=SC2086 # args are words
            if out=$("$BIN" bench $args --tls --ca-file "$WORK/pki/ca.pem" --duration "$DURATION" \
                --json --broker-pid "${PID[$b]}" --amqp-addr "${AMQP[$b]:-127.0.0.1:1}" \
                --mqtt-addr "${MQTT[$b]:-127.0.0.1:1}" 2>"$WORK/last.err"); then
                python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["target"]=sys.argv[2]; r["label"]=sys.argv[3]; r["round"]=int(sys.argv[4]); print(json.dumps(r))' \
                    "$out" "$b" "$label" "$round" >>"$RESULTS"
            else
                log "  failed: $(grep -m1 "^Error" "$WORK/last.err" || tail -1 "$WORK/last.err")"
            fi
        done
    done
done

python3 bench/table.py "$RESULTS"
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average: $(cut -d' ' -f1-3 /proc/loadavg); results: $RESULTS"
