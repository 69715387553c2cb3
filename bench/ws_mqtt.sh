#!/usr/bin/env bash
# MQTT throughput over WebSocket and WebSocket over TLS beside plain TCP: `switchboard bench
# mqtt` without and with `--ws` and `--ws --tls` against Switchboard (its Web MQTT listeners),
# Mosquitto (`protocol websockets` listeners, one with a certificate) and RabbitMQ (its
# rabbitmq_web_mqtt plugin, TCP and TLS), alternating within each round, on 127.0.0.1
# (non-standard ports); the table is bench/table.py's (median msg/s, broker CPU-seconds per
# million messages).
#
#   bench/ws_mqtt.sh                     # 3 rounds of 5 s runs
#   ROUNDS=5 DURATION=10 bench/ws_mqtt.sh
#   TRANSPORTS="tcp wss" BROKERS="switchboard mosquitto" bench/ws_mqtt.sh
#
# The TLS certificate (ECDSA P-256) comes from a throwaway CA made here with the openssl CLI
# (bench/lib.sh's make_pki); the bench trusts the CA (--ca-file). Needs a release build
# (`cargo build --release`); Mosquitto and RabbitMQ (Debian `rabbitmq-server`) are used when
# installed and skipped otherwise. Every broker started here is stopped on exit.
set -euo pipefail
export RUST_BACKTRACE=0

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
TRANSPORTS=${TRANSPORTS:-tcp ws wss}
BROKERS=${BROKERS:-switchboard mosquitto rabbitmq}
BIN=${BIN:-target/release/switchboard}
WORK=$(mktemp -d /tmp/switchboard-ws.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"

declare -A TCP WS WSS PID
EPMD_PID=
log() { echo "ws_mqtt: $*" >&2; }

# shellcheck source=bench/lib.sh
. bench/lib.sh

wanted() { [[ " $BROKERS " == *" $1 "* ]]; }

stop_all() { stop_brokers sbws@localhost; }
trap stop_all EXIT

[[ -x $BIN ]] || { log "no $BIN: run cargo build --release"; exit 1; }
make_pki "$WORK/pki"
CA=$WORK/pki/ca.pem CERT=$WORK/pki/server.pem KEY=$WORK/pki/server.key

TCP[switchboard]=127.0.0.1:1904
WS[switchboard]=127.0.0.1:15705
WSS[switchboard]=127.0.0.1:15706
SWITCHBOARD_SERVER_DATA_DIR=$WORK/switchboard-data \
SWITCHBOARD_AMQP_LISTEN='[]' SWITCHBOARD_STOMP_LISTEN='[]' SWITCHBOARD_STOMP_WS_LISTEN='[]' \
SWITCHBOARD_MQTT_LISTEN="[\"${TCP[switchboard]}\"]" \
SWITCHBOARD_MQTT_WS_LISTEN="[\"${WS[switchboard]}\"]" \
SWITCHBOARD_MQTT_WSS_LISTEN="[\"${WSS[switchboard]}\"]" \
SWITCHBOARD_TLS_CERT_FILE=$CERT SWITCHBOARD_TLS_KEY_FILE=$KEY \
SWITCHBOARD_HTTP_LISTEN='[]' SWITCHBOARD_PROMETHEUS_LISTEN='[]' SWITCHBOARD_LOG=warn \
    "$BIN" serve >"$WORK/switchboard.log" 2>&1 &
PID[switchboard]=$!

if wanted mosquitto && command -v mosquitto >/dev/null; then
    TCP[mosquitto]=127.0.0.1:1914
    WS[mosquitto]=127.0.0.1:15715
    WSS[mosquitto]=127.0.0.1:15716
    cat >"$WORK/mosquitto.conf" <<CONF
listener ${TCP[mosquitto]#*:} 127.0.0.1
listener ${WS[mosquitto]#*:} 127.0.0.1
protocol websockets
listener ${WSS[mosquitto]#*:} 127.0.0.1
protocol websockets
certfile $CERT
keyfile $KEY
allow_anonymous true
max_queued_messages 100000
CONF
    mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    PID[mosquitto]=$!
else
    log "mosquitto not installed or not wanted: skipped"
fi

if wanted rabbitmq && [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
    TCP[rabbitmq]=127.0.0.1:1924
    WS[rabbitmq]=127.0.0.1:15725
    WSS[rabbitmq]=127.0.0.1:15726
    mkdir -p "$WORK/rabbitmq"
    cat >"$WORK/rabbitmq/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:5684
mqtt.listeners.tcp.default = ${TCP[rabbitmq]}
web_mqtt.tcp.listener = ${WS[rabbitmq]}
web_mqtt.ssl.ip = 127.0.0.1
web_mqtt.ssl.port = ${WSS[rabbitmq]#*:}
web_mqtt.ssl.cacertfile = $CA
web_mqtt.ssl.certfile = $CERT
web_mqtt.ssl.keyfile = $KEY
loopback_users.guest = true
CONF
    run_rabbitmq sbws@localhost "$WORK/rabbitmq" "[rabbitmq_mqtt,rabbitmq_web_mqtt]"
else
    log "rabbitmq-server not installed or not wanted: skipped"
fi

for b in "${!PID[@]}"; do
    for addr in "${TCP[$b]}" "${WS[$b]}" "${WSS[$b]}"; do
        wait_port "$addr" 60 || { log "$b did not listen on $addr"; exit 1; }
    done
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
        for transport in $TRANSPORTS; do
            for b in switchboard mosquitto rabbitmq; do
                [[ -n ${PID[$b]:-} ]] || continue
                case $transport in
                    tcp) addr=${TCP[$b]} flags=() ;;
                    ws) addr=${WS[$b]} flags=(--ws) ;;
                    wss) addr=${WSS[$b]} flags=(--ws --tls --ca-file "$CA") ;;
                esac
                log "round $round: $b: $label over $transport"
                # shellcheck disable=SC2086 # args are words
                if out=$("$BIN" bench mqtt $args "${flags[@]}" --duration "$DURATION" --json \
                    --broker-pid "${PID[$b]}" --mqtt-addr "$addr" 2>"$WORK/last.err"); then
                    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["target"]=sys.argv[2]; r["label"]=sys.argv[3]; r["round"]=int(sys.argv[4]); print(json.dumps(r))' \
                        "$out" "$b" "$label, $transport" "$round" >>"$RESULTS"
                else
                    log "  failed: $(grep -m1 "^Error" "$WORK/last.err" || tail -1 "$WORK/last.err")"
                fi
            done
        done
    done
done

python3 bench/table.py "$RESULTS"
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average: $(cut -d' ' -f1-3 /proc/loadavg); results: $RESULTS"
