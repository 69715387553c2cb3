#!/usr/bin/env bash
# TLS handshake rate (full handshakes, no session resumption) with `openssl s_time -new`
# against Switchboard's AMQP and MQTT TLS listeners and Mosquitto's MQTT TLS listener, on
# 127.0.0.1 (non-standard ports), with one ECDSA P-256 certificate made here for all of them.
#
#   bench/tls_handshakes.sh              # 5 s per target
#   SECONDS_EACH=10 bench/tls_handshakes.sh
#
# Needs a release build (`cargo build --release`) and the openssl CLI; Mosquitto is used when
# installed. Every broker started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${SECONDS_EACH:-5}
BIN=${BIN:-target/release/switchboard}
WORK=$(mktemp -d /tmp/switchboard-tls.XXXXXX)
PIDS=()
log() { echo "tls_handshakes: $*" >&2; }
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK/data"
}
trap stop_all EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh

[[ -x $BIN ]] || { log "no $BIN: run cargo build --release"; exit 1; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
# Mosquitto started as root reads them as its own user (a throwaway key).
chmod 755 "$WORK" && chmod 644 "$WORK/key.pem" "$WORK/cert.pem"

SWITCHBOARD_SERVER_DATA_DIR=$WORK/data SWITCHBOARD_LOG=warn \
SWITCHBOARD_AMQP_LISTEN='[]' SWITCHBOARD_AMQP_TLS_LISTEN='["127.0.0.1:5691"]' \
SWITCHBOARD_MQTT_LISTEN='[]' SWITCHBOARD_MQTT_TLS_LISTEN='["127.0.0.1:8893"]' \
SWITCHBOARD_MQTT_WS_LISTEN='[]' SWITCHBOARD_STOMP_LISTEN='[]' SWITCHBOARD_STOMP_WS_LISTEN='[]' \
SWITCHBOARD_HTTP_LISTEN='[]' SWITCHBOARD_PROMETHEUS_LISTEN='[]' \
SWITCHBOARD_TLS_CERT_FILE=$WORK/cert.pem SWITCHBOARD_TLS_KEY_FILE=$WORK/key.pem \
    "$BIN" serve >"$WORK/switchboard.log" 2>&1 &
PIDS+=($!)
TARGETS=("switchboard AMQP|127.0.0.1:5691" "switchboard MQTT|127.0.0.1:8893")
if command -v mosquitto >/dev/null; then
    cat >"$WORK/mosquitto.conf" <<CONF
listener 8903 127.0.0.1
certfile $WORK/cert.pem
keyfile $WORK/key.pem
allow_anonymous true
CONF
    mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    PIDS+=($!)
    TARGETS+=("mosquitto MQTT|127.0.0.1:8903")
fi
for t in "${TARGETS[@]}"; do wait_port "${t#*|}" 30 || { log "${t%|*} did not start"; exit 1; }; done

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
