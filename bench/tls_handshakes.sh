#!/usr/bin/env bash
# TLS handshake rate (full handshakes, no session resumption) with `openssl s_time -new`
# against the AMQP and MQTT TLS listeners of Switchboard and RabbitMQ and Mosquitto's MQTT TLS
# listener, on 127.0.0.1 (non-standard ports), with one server certificate (ECDSA P-256, from a
# throwaway CA made here) for all of them.
#
#   bench/tls_handshakes.sh              # 5 s per target
#   SECONDS_EACH=10 bench/tls_handshakes.sh
#
# Needs a release build (`cargo build --release`) and the openssl CLI; RabbitMQ (Debian
# `rabbitmq-server`, with rabbitmq_mqtt) and Mosquitto are used when installed and skipped
# otherwise. Every broker started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${SECONDS_EACH:-5}
BIN=${BIN:-target/release/switchboard}
WORK=$(mktemp -d /tmp/switchboard-tls.XXXXXX)
declare -A PID
EPMD_PID=
log() { echo "tls_handshakes: $*" >&2; }

# shellcheck source=bench/lib.sh
. bench/lib.sh

stop_all() { stop_brokers sbhandshakes@localhost; }
trap stop_all EXIT

[[ -x $BIN ]] || { log "no $BIN: run cargo build --release"; exit 1; }
make_pki "$WORK/pki"
CERT=$WORK/pki/server.pem KEY=$WORK/pki/server.key

SWITCHBOARD_SERVER_DATA_DIR=$WORK/switchboard-data SWITCHBOARD_LOG=warn \
SWITCHBOARD_AMQP_LISTEN='[]' SWITCHBOARD_AMQP_TLS_LISTEN='["127.0.0.1:5691"]' \
SWITCHBOARD_MQTT_LISTEN='[]' SWITCHBOARD_MQTT_TLS_LISTEN='["127.0.0.1:8893"]' \
SWITCHBOARD_MQTT_WS_LISTEN='[]' SWITCHBOARD_STOMP_LISTEN='[]' SWITCHBOARD_STOMP_WS_LISTEN='[]' \
SWITCHBOARD_HTTP_LISTEN='[]' SWITCHBOARD_PROMETHEUS_LISTEN='[]' \
SWITCHBOARD_TLS_CERT_FILE=$CERT SWITCHBOARD_TLS_KEY_FILE=$KEY \
    "$BIN" serve >"$WORK/switchboard.log" 2>&1 &
PID[switchboard]=$!
TARGETS=("switchboard AMQP|127.0.0.1:5691" "switchboard MQTT|127.0.0.1:8893")
if [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
    mkdir -p "$WORK/rabbitmq"
    rabbitmq_tls_conf 5681 5692 1892 8894 "$WORK/pki" >"$WORK/rabbitmq/rabbitmq.conf"
    run_rabbitmq sbhandshakes@localhost "$WORK/rabbitmq" "[rabbitmq_mqtt]"
    TARGETS+=("rabbitmq AMQP|127.0.0.1:5692" "rabbitmq MQTT|127.0.0.1:8894")
else
    log "rabbitmq-server not installed: skipped"
fi
if command -v mosquitto >/dev/null; then
    cat >"$WORK/mosquitto.conf" <<CONF
listener 8903 127.0.0.1
certfile $CERT
keyfile $KEY
allow_anonymous true
CONF
    mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    PID[mosquitto]=$!
    TARGETS+=("mosquitto MQTT|127.0.0.1:8903")
else
    log "mosquitto not installed: skipped"
fi
for t in "${TARGETS[@]}"; do wait_port "${t#*|}" 60 || { log "${t%|*} did not start"; exit 1; }; done

# One client process, handshakes one after another: the rate is handshakes over wall-clock time.
echo "| target | TLS | handshakes | seconds | handshakes/s |"
echo "|---|---|---|---|---|"
for t in "${TARGETS[@]}"; do
    for version in -tls1_2 -tls1_3; do
        start=$(date +%s.%N)
        n=$(openssl s_time -connect "${t#*|}" -new "$version" -time "$SECONDS_EACH" 2>/dev/null |
            sed -n 's/^\([0-9]*\) connections in [0-9.]*s;.*/\1/p' | head -1)
        took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
        rate=$(awk -v n="${n:-0}" -v t="$took" 'BEGIN { printf "%.0f", n / t }')
        echo "| ${t%|*} | ${version#-} | ${n:-failed} | $took | $rate |"
    done
done
echo
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
