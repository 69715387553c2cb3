#!/usr/bin/env bash
# MQTT QoS 1 to an offline persistent session: one publisher, PUBACK after the message is
# stored, nobody consuming. Switchboard (fsync = "always": the PUBACK follows the fdatasync of
# the session queue's log record) against Mosquitto with persistence on, on 127.0.0.1.
#
#   bench/mqtt_offline.sh                   # 3 rounds of 100,000 messages, 100 in flight
#   ROUNDS=5 MESSAGES=200000 WINDOW=1000 bench/mqtt_offline.sh
#
# Needs a release build (`cargo build --release`) and Debian's `mosquitto` (skipped when not
# installed). Every broker started here is stopped on exit; their data goes with it.
set -euo pipefail
export RUST_BACKTRACE=0

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-100000}
WINDOW=${WINDOW:-100}
BIN=${BIN:-target/release/switchboard}
WORK=$(mktemp -d /tmp/switchboard-mqtt-offline.XXXXXX)
TOPIC=switchboard-bench/mqtt
PIDS=()

log() { echo "mqtt_offline: $*" >&2; }

stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap stop_all EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh

# Opens a persistent MQTT 3.1.1 session (clean session 0) for client id "offline", subscribes
# it to $TOPIC at QoS 1 and disconnects, with the bytes written by hand (no client needed).
offline_session() { # host:port
    exec 3<>"/dev/tcp/${1%:*}/${1#*:}"
    # CONNECT: "MQTT", level 4, flags 0 (persistent, no user name), keep alive 60, id "offline".
    printf '\x10\x13\x00\x04MQTT\x04\x00\x00\x3c\x00\x07offline' >&3
    # SUBSCRIBE id 1: the topic (22 bytes) at QoS 1.
    printf '\x82\x1b\x00\x01\x00\x16%s\x01' "$TOPIC" >&3
    # CONNACK (4 bytes) and SUBACK (5 bytes) before letting go.
    head -c 9 <&3 >/dev/null
    printf '\xe0\x00' >&3
    exec 3>&-
}

run() { # name host:port round
    offline_session "$2"
    "$BIN" bench mqtt --mqtt-addr "$2" --qos 1 --consumers 0 --max-in-flight 0 \
        --messages "$MESSAGES" --confirm "$WINDOW" --drain-timeout 1 --json \
        >"$WORK/$1-$3.json" 2>/dev/null || true
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], sys.argv[3], round(r["published"]/r["publish_seconds"]))' \
        "$WORK/$1-$3.json" "$1" "$3"
}

[[ -x $BIN ]] || { log "no $BIN: run cargo build --release"; exit 1; }
SB=127.0.0.1:1923
SWITCHBOARD_SERVER_DATA_DIR=$WORK/switchboard-data \
SWITCHBOARD_AMQP_LISTEN='["127.0.0.1:5712"]' SWITCHBOARD_STOMP_LISTEN='[]' \
SWITCHBOARD_MQTT_LISTEN="[\"$SB\"]" SWITCHBOARD_HTTP_LISTEN='["127.0.0.1:15712"]' SWITCHBOARD_PROMETHEUS_LISTEN='[]' \
SWITCHBOARD_MQTT_WS_LISTEN='[]' SWITCHBOARD_STOMP_WS_LISTEN='[]' \
SWITCHBOARD_MQTT_MAX_OFFLINE_MESSAGES=100000000 SWITCHBOARD_LOG=warn \
    "$BIN" serve >"$WORK/switchboard.log" 2>&1 &
PIDS+=($!)
wait_port "$SB" 30 || { log "switchboard did not start"; exit 1; }

MQ=127.0.0.1:1933
if command -v mosquitto >/dev/null; then
    mkdir -p "$WORK/mosquitto-data"
    cat >"$WORK/mosquitto.conf" <<CONF
listener 1933 127.0.0.1
allow_anonymous true
persistence true
persistence_location $WORK/mosquitto-data/
max_queued_messages 0
CONF
    mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    PIDS+=($!)
    wait_port "$MQ" 10 || { log "mosquitto did not start"; exit 1; }
else
    MQ=
    log "mosquitto not installed: skipped"
fi

echo "broker round msg/s"
for round in $(seq 1 "$ROUNDS"); do
    run switchboard "$SB" "$round"
    [[ -n $MQ ]] && run mosquitto "$MQ" "$round"
done
# What the offline session holds on Switchboard: every acknowledged message, in its queue
# (ready, and unacknowledged: the few each round's reconnect took in flight).
"$BIN" ctl --url http://127.0.0.1:15712 list_queues name messages_ready messages_unacknowledged 2>/dev/null | grep offline || true
