#!/usr/bin/env bash
# Store benchmarks, Switchboard against RabbitMQ on 127.0.0.1 with one load generator
# (`switchboard bench`), each broker on its own fresh data directory under $WORK:
#
#   declare  durable queue declare and delete rates at 1,000, 10,000 and 100,000 queues
#            (`bench declare`: C connections, one declare in flight on each, as clients that
#            wait for declare-ok), with the rate of the first and the last tenth of each phase
#   fanout   persistent messages with confirms to a fanout exchange bound to 10 durable queues,
#            each with an acking consumer: msg/s, and bytes written per message, from the data
#            directory's growth (Switchboard, one log segment for the whole run so none is
#            deleted under the measurement) and from the broker's write_bytes in /proc/PID/io
#
#   bench/store.sh                              # both parts
#   PARTS=declare COUNTS="1000 10000" CHANNELS=32 bench/store.sh
#   PARTS=fanout MESSAGES=200000 SIZE=4096 bench/store.sh
#
# Needs a release build (`cargo build --release`; BIN= another switchboard binary for the load
# generator, SERVE_BIN= another one to serve). rabbitmq-server is installed with apt-get when
# missing and apt-get is there (as root), else RabbitMQ is skipped. Every broker started here is
# stopped on exit and its data removed. One line per run on stdout: the bench's JSON with
# "target" (the broker) added, and for fanout "write_bytes" and "data_dir_bytes".
set -euo pipefail
export RUST_BACKTRACE=0

cd "$(dirname "$0")/.."
PARTS=${PARTS:-declare fanout}
COUNTS=${COUNTS:-1000 10000 100000}
CHANNELS=${CHANNELS:-16}
MESSAGES=${MESSAGES:-100000}
SIZE=${SIZE:-1024}
WINDOW=${WINDOW:-1000}
BIN=${BIN:-target/release/switchboard}
SERVE_BIN=${SERVE_BIN:-$BIN}
WORK=$(mktemp -d /tmp/switchboard-store-bench.XXXXXX)
PIDS=()
RABBIT_PID=
EPMD_PID=
RABBIT_NODE=sbstore@localhost
declare -A PID  # run_rabbitmq (bench/lib.sh) sets PID[rabbitmq]

log() { echo "store.sh: $*" >&2; }

# shellcheck source=bench/lib.sh
. bench/lib.sh

stop_rabbitmq() {
    [[ -n $RABBIT_PID ]] || return 0
    HOME=$WORK/rabbitmq timeout 120 /usr/lib/rabbitmq/bin/rabbitmqctl -n "$RABBIT_NODE" -q stop \
        >/dev/null 2>&1 || kill "$RABBIT_PID" 2>/dev/null || true
    [[ -n $EPMD_PID ]] && kill "$EPMD_PID" 2>/dev/null || true
    RABBIT_PID=
}

stop_all() {
    stop_rabbitmq
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap stop_all EXIT

SB=127.0.0.1:5722
RB=127.0.0.1:5732

start_switchboard() { # extra environment assignments...
    rm -rf "$WORK/switchboard-data"
    env SWITCHBOARD_SERVER_DATA_DIR="$WORK/switchboard-data" \
        SWITCHBOARD_AMQP_LISTEN="[\"$SB\"]" SWITCHBOARD_STOMP_LISTEN='[]' SWITCHBOARD_MQTT_LISTEN='[]' \
        SWITCHBOARD_HTTP_LISTEN='["127.0.0.1:15722"]' SWITCHBOARD_PROMETHEUS_LISTEN='[]' \
        SWITCHBOARD_LOG=warn "$@" "$SERVE_BIN" serve >"$WORK/switchboard.log" 2>&1 &
    SB_PID=$!
    PIDS+=("$SB_PID")
    wait_port "$SB" 60 || { log "switchboard did not start"; exit 1; }
}

stop_switchboard() {
    kill "$SB_PID" 2>/dev/null || true
    wait "$SB_PID" 2>/dev/null || true
}

have_rabbitmq() {
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] && return 0
    command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]] || return 1
    log "installing rabbitmq-server with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server; } \
        </dev/null >/dev/null 2>&1 || return 1
    # The package starts its own node on the standard ports; ours runs apart from it.
    systemctl stop rabbitmq-server >/dev/null 2>&1 || service rabbitmq-server stop >/dev/null 2>&1 || true
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]
}

start_rabbitmq() {
    local dir=$WORK/rabbitmq
    rm -rf "$dir" && mkdir -p "$dir"
    cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = $RB
loopback_users.guest = true
CONF
    run_rabbitmq "$RABBIT_NODE" "$dir" "[]"
    RABBIT_PID=${PID[rabbitmq]}
}

# Adds "target" (the broker measured) and the other given fields to the JSON object on stdin.
tag() { # broker key=value...
    python3 -c 'import json,sys
r=json.load(sys.stdin); r["target"]=sys.argv[1]
for kv in sys.argv[2:]:
    k,v=kv.split("=",1); r[k]=json.loads(v)
print(json.dumps(r))' "$@"
}

declare_part() { # broker addr
    for n in $COUNTS; do
        "$BIN" bench declare --addr "$2" --queues "$n" --channels "$CHANNELS" --json | tag "$1"
    done
}

write_bytes() { awk '/^write_bytes/ {print $2}' "/proc/$1/io"; }

fanout_run() { # broker addr pid data-dir
    local io0 du0 out
    io0=$(write_bytes "$3")
    du0=$(du -sb "$4" | cut -f1)
    out=$("$BIN" bench amqp-fanout --addr "$2" --consumers 10 --persistent --confirm "$WINDOW" \
        --manual-ack 200 --messages "$MESSAGES" --size "$SIZE" --duration 600 --json \
        --queue "sb-store-fanout" --broker-pid "$3")
    local io1 du1
    io1=$(write_bytes "$3")
    du1=$(du -sb "$4" | cut -f1)
    echo "$out" | tag "$1" "write_bytes=$((io1 - io0))" "data_dir_bytes=$((du1 - du0))"
}

for part in $PARTS; do
    case $part in
    declare)
        start_switchboard
        declare_part switchboard "$SB"
        stop_switchboard
        if have_rabbitmq; then
            start_rabbitmq
            declare_part rabbitmq "$RB"
            stop_rabbitmq
        else
            log "rabbitmq-server not installed: skipped"
        fi
        ;;
    fanout)
        # One segment for the whole run: nothing is deleted while the growth is measured.
        start_switchboard SWITCHBOARD_STORE_SEGMENT_BYTES=$((64 << 30))
        fanout_run switchboard "$SB" "$SB_PID" "$WORK/switchboard-data"
        stop_switchboard
        if have_rabbitmq; then
            start_rabbitmq
            fanout_run rabbitmq "$RB" "$RABBIT_PID" "$WORK/rabbitmq/mnesia"
            stop_rabbitmq
        fi
        ;;
    *) log "unknown part $part (declare, fanout)"; exit 1 ;;
    esac
done
