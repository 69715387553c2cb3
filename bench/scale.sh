#!/usr/bin/env bash
# The scale table (issue 13): seconds to create and to remove 1k / 10k / 100k bindings of one
# queue, queues, consumers of one queue and MQTT subscriptions of one session, on Switchboard,
# RabbitMQ (AMQP and its MQTT plugin) and Mosquitto (MQTT), each started here on 127.0.0.1 with
# its own data directory under /tmp and non-standard ports, one after another (never two at
# once), and stopped after. The client is bench/scale.py (pika; MQTT packets by hand), the same
# for every broker. Each cell is wall-clock seconds as the client saw them, then the broker
# process's CPU seconds for the same phases (from /proc/PID/stat).
#
#   bench/scale.sh                          # sizes 1000,10000,100000
#   SIZES=1000,10000 KINDS=queues,mqtt BROKERS="rabbitmq mosquitto" bench/scale.sh
#
# Needs a release build (BIN, default target/release/switchboard) and python3 with venv;
# installs rabbitmq-server and mosquitto with apt-get when missing (and able to).
set -euo pipefail
export RUST_BACKTRACE=0

cd "$(dirname "$0")/.."
SIZES=${SIZES:-1000,10000,100000}
KINDS=${KINDS:-bindings,queues,consumers,mqtt}
BROKERS=${BROKERS:-switchboard rabbitmq mosquitto}
BIN=${BIN:-target/release/switchboard}
WORK=$(mktemp -d /tmp/switchboard-scale.XXXXXX)
VENV=${VENV:-/tmp/switchboard-scale-venv}
RESULTS=$WORK/results.jsonl
PID=
EPMD_PID=

log() { echo "scale: $*" >&2; }

# shellcheck source=bench/lib.sh
. bench/lib.sh

stop_broker() {
    if [[ -n $PID ]]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
        PID=
    fi
}
cleanup() {
    stop_broker
    [[ -n $EPMD_PID ]] && kill "$EPMD_PID" 2>/dev/null || true
    rm -rf "$WORK/switchboard-data" "$WORK/rabbitmq/mnesia" "$WORK/mosquitto-data"
}
trap cleanup EXIT

if ! { command -v mosquitto && [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; } >/dev/null; then
    if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            rabbitmq-server mosquitto; } </dev/null >/dev/null || log "apt-get install failed"
    fi
fi
if ! "$VENV/bin/python" -c 'import pika' 2>/dev/null; then
    python3 -m venv --clear "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "$(grep '^pika==' interop/requirements.txt)"
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

run() { # broker, then scale.py's address arguments
    local b=$1
    shift
    log "$b"
    "$VENV/bin/python" bench/scale.py "$b" --sizes "$SIZES" --kinds "$KINDS" ${PID:+--pid "$PID"} "$@" \
        | tee -a "$RESULTS"
}

if [[ $BROKERS == *switchboard* ]]; then
    [[ -x $BIN ]] || { log "no $BIN: run cargo build --release"; exit 1; }
    SWITCHBOARD_SERVER_DATA_DIR=$WORK/switchboard-data \
    SWITCHBOARD_AMQP_LISTEN='["127.0.0.1:5732"]' SWITCHBOARD_STOMP_LISTEN='[]' \
    SWITCHBOARD_MQTT_LISTEN='["127.0.0.1:1953"]' SWITCHBOARD_HTTP_LISTEN='["127.0.0.1:15732"]' \
    SWITCHBOARD_PROMETHEUS_LISTEN='[]' SWITCHBOARD_LOG=warn \
        "$BIN" serve >"$WORK/switchboard.log" 2>&1 &
    PID=$!
    wait_port 127.0.0.1:5732 30 || { log "switchboard did not start"; exit 1; }
    run switchboard --amqp 127.0.0.1:5732 --mqtt 127.0.0.1:1953
    stop_broker
fi

if [[ $BROKERS != *rabbitmq* ]]; then
    :
elif [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
    dir=$WORK/rabbitmq
    mkdir -p "$dir"
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:5742
mqtt.listeners.tcp.default = 127.0.0.1:1963
loopback_users.guest = true
CONF
    echo "[rabbitmq_mqtt]." >"$dir/enabled_plugins"
    pgrep -x epmd >/dev/null && had_epmd=1 || had_epmd=
    (
        export HOME=$dir RABBITMQ_NODENAME=sbscale@localhost RABBITMQ_NODE_PORT=5742 \
            RABBITMQ_DIST_PORT=25742 RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf \
            RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins RABBITMQ_MNESIA_BASE=$dir/mnesia \
            RABBITMQ_LOG_BASE=$dir/log RABBITMQ_PID_FILE=$dir/pid
        setsid /usr/lib/rabbitmq/bin/rabbitmq-server >"$dir/out.log" 2>&1 &
        /usr/lib/rabbitmq/bin/rabbitmqctl -n sbscale@localhost -q wait --timeout 120 "$dir/pid" >/dev/null
    )
    PID=$(cat "$dir/pid")
    [[ -n $had_epmd ]] || EPMD_PID=$(pgrep -x epmd || true)
    run rabbitmq --amqp 127.0.0.1:5742 --mqtt 127.0.0.1:1963
    HOME=$dir timeout 120 /usr/lib/rabbitmq/bin/rabbitmqctl -n sbscale@localhost -q stop >/dev/null 2>&1 || true
    stop_broker
else
    log "rabbitmq-server not installed: skipped"
fi

if [[ $BROKERS != *mosquitto* || $KINDS != *mqtt* ]]; then
    :
elif command -v mosquitto >/dev/null; then
    cat >"$WORK/mosquitto.conf" <<CONF
listener 1973 127.0.0.1
allow_anonymous true
CONF
    mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    PID=$!
    wait_port 127.0.0.1:1973 10 || { log "mosquitto did not start"; exit 1; }
    run mosquitto --mqtt 127.0.0.1:1973
    stop_broker
else
    log "mosquitto not installed: skipped"
fi

python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
brokers = list(dict.fromkeys(r["broker"] for r in rows))
print("| kind | n | " + " | ".join(f"{b} create / remove s" for b in brokers) + " |")
print("|---|---|" + "---|" * len(brokers))
for kind in dict.fromkeys(r["kind"] for r in rows):
    for n in sorted({r["n"] for r in rows if r["kind"] == kind}):
        cells = []
        for b in brokers:
            r = [x for x in rows if (x["broker"], x["kind"], x["n"]) == (b, kind, n)]
            cpu = (f' (CPU {r[0]["create_cpu_s"]} / {r[0]["remove_cpu_s"]})'
                   if r and "create_cpu_s" in r[0] else "")
            cells.append(f'{r[0]["create_s"]} / {r[0]["remove_s"]}{cpu}' if r else "-")
        print(f"| {kind} | {n:,} | " + " | ".join(cells) + " |")
PY
echo
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); results: $RESULTS"
