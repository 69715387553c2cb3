#!/usr/bin/env bash
# Broker instructions per message under callgrind: steadier than CPU seconds or msg/s on a
# shared, loaded machine, so this is what the README's per-message cost tables quote.
#
#   bench/instructions.sh amqp|mqtt [bench options...]
#   bench/instructions.sh mqtt --qos 1
#   ROUNDS=3 bench/instructions.sh amqp --size 1024
#   KEEP=/tmp/cg bench/instructions.sh mqtt      # keep each measured dump for callgrind_annotate
#
# Each round starts a fresh broker (release build, $BIN) under `valgrind --tool=callgrind
# --instr-atstart=no`, runs `bench SCENARIO --size 16 --messages $WARMUP` against it
# uninstrumented as a warm-up, switches instrumentation on and zeroes the counters
# (`callgrind_control -i on`, `-z`), runs `bench SCENARIO --size 16 --messages $MESSAGES`,
# dumps (`callgrind_control -d`) and prints the dump's `totals:` over the messages consumed.
# Options after the scenario go to both bench runs (a --size among them replaces the 16).
# Prints one line per round and, with more than one round, the median.
set -euo pipefail

cd "$(dirname "$0")/.."
SCENARIO=${1:?usage: bench/instructions.sh amqp|mqtt [bench options...]}
shift
case $SCENARIO in amqp | mqtt) ;; *) echo "scenario must be amqp or mqtt" >&2; exit 2 ;; esac
ROUNDS=${ROUNDS:-1}
WARMUP=${WARMUP:-20000}
MESSAGES=${MESSAGES:-100000}
BIN=${BIN:-target/release/switchboard}
KEEP=${KEEP:-}
[[ -x $BIN ]] || { echo "no $BIN: cargo build --release first" >&2; exit 1; }
WORK=$(mktemp -d /tmp/switchboard-instr.XXXXXX)
PID=
trap '[[ -n $PID ]] && kill "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT

start_broker() {
    rm -rf "$WORK/data" "$WORK/ports.json" "$WORK"/callgrind.out*
    local amqp='[]' mqtt='[]'
    if [[ $SCENARIO == amqp ]]; then amqp='["127.0.0.1:0"]'; else mqtt='["127.0.0.1:0"]'; fi
    SWITCHBOARD_SERVER_DATA_DIR=$WORK/data SWITCHBOARD_SERVER_DISK_FREE_LIMIT_BYTES=0 \
    SWITCHBOARD_AMQP_LISTEN=$amqp SWITCHBOARD_MQTT_LISTEN=$mqtt SWITCHBOARD_STOMP_LISTEN='[]' \
    SWITCHBOARD_HTTP_LISTEN='[]' SWITCHBOARD_MQTT_WS_LISTEN='[]' SWITCHBOARD_STOMP_WS_LISTEN='[]' \
    SWITCHBOARD_PROMETHEUS_LISTEN='[]' SWITCHBOARD_LOG=warn \
        valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out" \
        "$BIN" serve --ports-file "$WORK/ports.json" >>"$WORK/switchboard.log" 2>&1 &
    PID=$!
    local end=$((SECONDS + 180))
    until [[ -s $WORK/ports.json ]]; do
        ((SECONDS < end)) || { echo "switchboard did not start" >&2; cat "$WORK/switchboard.log" >&2; exit 1; }
        sleep 0.2
    done
    ADDR=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]][0])' \
        "$WORK/ports.json" "$SCENARIO")
}

bench() { # messages, options...: prints the bench's JSON
    local messages=$1
    shift
    local size=(--size 16)
    [[ " $* " == *" --size "* ]] && size=()
    "$BIN" bench "$SCENARIO" --addr "$ADDR" "${size[@]}" --messages "$messages" --duration 600 "$@" --json 2>/dev/null
}

run() { # round
    start_broker
    bench "$WARMUP" "${OPTS[@]}" >/dev/null
    callgrind_control -i on "$PID" >/dev/null 2>&1
    callgrind_control -z "$PID" >/dev/null 2>&1
    local consumed before dump
    consumed=$(bench "$MESSAGES" "${OPTS[@]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["consumed"])')
    before=$(ls "$WORK"/callgrind.out* 2>/dev/null || true)
    callgrind_control -d "$PID" >/dev/null 2>&1
    dump=$(comm -13 <(echo "$before" | sort) <(ls "$WORK"/callgrind.out* | sort) | tail -n 1)
    [[ -n $dump ]] || { echo "callgrind wrote no dump" >&2; exit 1; }
    kill -INT "$PID"; wait "$PID" 2>/dev/null || true; PID=
    if [[ -n $KEEP ]]; then mkdir -p "$KEEP"; cp "$dump" "$KEEP/callgrind.$SCENARIO.$1.out"; fi
    python3 - "$consumed" "$dump" <<'PY'
import sys
consumed, dump = int(sys.argv[1]), sys.argv[2]
# "summary:" stays 0 when instrumentation is switched on at run time; "totals:" has the count.
total = max((int(line.split()[1]) for line in open(dump, errors="replace")
             if line.startswith(("summary:", "totals:"))), default=0)
if consumed == 0:
    sys.exit("no message consumed")
print(f"{total / consumed:.0f}")
PY
}

OPTS=("$@")
FIGURES=()
for ((r = 1; r <= ROUNDS; r++)); do
    figure=$(run "$r")
    echo "$SCENARIO ${OPTS[*]} round $r: $figure instructions per message"
    FIGURES+=("$figure")
done
if ((ROUNDS > 1)); then
    python3 -c 'import statistics,sys; v=[int(x) for x in sys.argv[1:]]; print(f"median {statistics.median(v):.0f} [{min(v)}-{max(v)}]")' "${FIGURES[@]}"
fi
