#!/usr/bin/env bash
# Broker CPU per million messages with message-rate sampling on (every STATS_MS, default the
# 5 s default) against off (http.stats_interval_ms = 0), alternating fresh brokers so that
# machine load hits both alike. Counters are kept either way; the sampler is what is switched.
# QUEUES idle queues (default 0) are declared first, to give the sampler something to walk.
#
#   bench/stats_overhead.sh                    # 3 rounds of `bench amqp --duration 5`
#   ROUNDS=5 QUEUES=10000 bench/stats_overhead.sh
#   CALLGRIND=1 bench/stats_overhead.sh        # instructions per message instead (valgrind)
#
# Prints one line per run and the medians. With CALLGRIND=1 the broker runs under callgrind,
# collecting only while the bench runs, and each run's figure is the broker's instructions per
# message: steadier than CPU seconds on a loaded machine. The broker is ~50x slower under
# callgrind while the sampler still wakes every STATS_MS of wall time, so its share comes out
# about that much larger than in a normal run: an upper bound.
set -euo pipefail

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
STATS_MS=${STATS_MS:-5000}
QUEUES=${QUEUES:-0}
BIN=${BIN:-target/release/switchboard}
CALLGRIND=${CALLGRIND:-0}
WORK=$(mktemp -d /tmp/switchboard-stats.XXXXXX)
PID=
trap '[[ -n $PID ]] && kill "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT

start_broker() { # stats interval in ms
    rm -rf "$WORK/data" "$WORK/ports.json"
    SWITCHBOARD_SERVER_DATA_DIR=$WORK/data SWITCHBOARD_SERVER_DISK_FREE_LIMIT_BYTES=0 \
    SWITCHBOARD_AMQP_LISTEN='["127.0.0.1:0"]' SWITCHBOARD_STOMP_LISTEN='[]' \
    SWITCHBOARD_MQTT_LISTEN='[]' SWITCHBOARD_HTTP_LISTEN='["127.0.0.1:0"]' \
    SWITCHBOARD_MQTT_WS_LISTEN='[]' SWITCHBOARD_STOMP_WS_LISTEN='[]' \
    SWITCHBOARD_PROMETHEUS_LISTEN='[]' SWITCHBOARD_HTTP_STATS_INTERVAL_MS=$1 SWITCHBOARD_LOG=warn \
        ${WRAP[@]+"${WRAP[@]}"} "$BIN" serve --ports-file "$WORK/ports.json" >>"$WORK/switchboard.log" 2>&1 &
    PID=$!
    local end=$((SECONDS + 180))
    until [[ -s $WORK/ports.json ]]; do
        ((SECONDS < end)) || { echo "switchboard did not start" >&2; exit 1; }
        sleep 0.2
    done
    AMQP_ADDR=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["amqp"][0])' "$WORK/ports.json")
    if ((QUEUES > 0)); then
        python3 - "$AMQP_ADDR" "$QUEUES" <<'PY'
import socket, struct, sys
# Declares N queues over raw AMQP 0-9-1 (no client library needed): handshake as guest,
# channel 1, queue.declare with no-wait.
host, port = sys.argv[1].rsplit(":", 1)
n = int(sys.argv[2])
s = socket.create_connection((host, int(port)))
def frame(t, ch, payload): return struct.pack(">BHI", t, ch, len(payload)) + payload + b"\xce"
def method(c, m, args=b""): return struct.pack(">HH", c, m) + args
def shortstr(x): return bytes([len(x)]) + x
def longstr(x): return struct.pack(">I", len(x)) + x
def read_frame():
    h = b""
    while len(h) < 7: h += s.recv(7 - len(h))
    t, ch, size = struct.unpack(">BHI", h)
    body = b""
    while len(body) < size + 1: body += s.recv(size + 1 - len(body))
    return body[:-1]
s.sendall(b"AMQP\x00\x00\x09\x01")
read_frame()  # start
s.sendall(frame(1, 0, method(10, 11, struct.pack(">I", 0) + shortstr(b"PLAIN") + longstr(b"\x00guest\x00guest") + shortstr(b"en_US"))))
tune = read_frame()
s.sendall(frame(1, 0, method(10, 31, tune[4:12])))
s.sendall(frame(1, 0, method(10, 40, shortstr(b"/") + shortstr(b"") + b"\x00")))
read_frame()  # open-ok
s.sendall(frame(1, 1, method(20, 10, shortstr(b""))))
read_frame()  # channel open-ok
batch = b""
for i in range(n):
    # queue.declare: reserved, name, bits (no-wait = bit 4), empty table
    batch += frame(1, 1, method(50, 10, b"\x00\x00" + shortstr(f"idle-{i}".encode()) + b"\x10" + struct.pack(">I", 0)))
    if len(batch) > 65536:
        s.sendall(batch); batch = b""
s.sendall(batch)
s.sendall(frame(1, 1, method(50, 10, b"\x00\x00" + shortstr(b"idle-last") + b"\x00" + struct.pack(">I", 0))))
while True:
    f = read_frame()
    if f[:4] == struct.pack(">HH", 50, 11): break
s.close()
PY
    fi
}

WRAP=()
if [[ $CALLGRIND == 1 ]]; then
    WRAP=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out")
fi

run() { # label stats-ms
    start_broker "$2"
    local figure
    if [[ $CALLGRIND == 1 ]]; then
        rm -f "$WORK"/callgrind.out*
        callgrind_control -i on "$PID" >/dev/null
        local messages
        messages=$("$BIN" bench amqp --amqp-addr "$AMQP_ADDR" --duration "$DURATION" --json 2>/dev/null |
            python3 -c 'import json,sys; d=json.load(sys.stdin); print(max(d["published"], d["consumed"]))')
        callgrind_control -i off "$PID" >/dev/null
        kill -INT "$PID"; wait "$PID" 2>/dev/null || true; PID=
        figure=$(python3 - "$messages" "$WORK"/callgrind.out* <<'PY'
import sys
messages, files = int(sys.argv[1]), sys.argv[2:]
total = 0
for f in files:
    # "summary:" stays 0 when instrumentation was toggled at run time; "totals:" has the count.
    total += max((int(line.split()[1]) for line in open(f, errors="replace")
                  if line.startswith(("summary:", "totals:"))), default=0)
print(f"{total / max(messages, 1):.0f}")
PY
)
    else
        figure=$("$BIN" bench amqp --amqp-addr "$AMQP_ADDR" --duration "$DURATION" --broker-pid "$PID" --json 2>/dev/null |
            python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["broker"]["cpu_seconds_per_million"])')
        kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
    fi
    echo "$1 $figure"
}

declare -a ON OFF
for ((r = 1; r <= ROUNDS; r++)); do
    line=$(run "sampling-on(${STATS_MS}ms)" "$STATS_MS"); echo "$line"; ON+=("${line##* }")
    line=$(run "sampling-off" 0); echo "$line"; OFF+=("${line##* }")
done
python3 - "${ON[*]}" "${OFF[*]}" "$CALLGRIND" <<'PY'
import statistics, sys
on = [float(x) for x in sys.argv[1].split()]
off = [float(x) for x in sys.argv[2].split()]
m_on, m_off = statistics.median(on), statistics.median(off)
unit = "instructions per message" if len(sys.argv) > 3 and sys.argv[3] == "1" else "CPU-s per million"
print(f"median broker {unit}: on {m_on:.3f} [{min(on):.3f}-{max(on):.3f}], "
      f"off {m_off:.3f} [{min(off):.3f}-{max(off):.3f}], difference {100 * (m_on - m_off) / m_off:+.1f}%")
PY
