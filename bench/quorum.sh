#!/usr/bin/env bash
# Quorum queue figures on three Switchboard nodes on loopback (README, "Quorum queues"):
# confirmed publishing of 16-byte messages into a quorum queue through its leader, and the
# leader's failover time (kill -9, time until a confirm comes from the new leader).
#   bench/quorum.sh [path/to/switchboard]   (default target/release/switchboard)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/switchboard}
WORK=$(mktemp -d)
declare -A PID
cleanup() {
    for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
source bench/lib.sh

start_node() { # i
    local i=$1 seeds='[]'
    [[ $i != 1 ]] && seeds='["127.0.0.1:25871"]'
    SWITCHBOARD_SERVER_DATA_DIR=$WORK/data$i SWITCHBOARD_AMQP_LISTEN="[\"127.0.0.1:587$i\"]" \
        SWITCHBOARD_MQTT_LISTEN='[]' SWITCHBOARD_STOMP_LISTEN='[]' SWITCHBOARD_MQTT_WS_LISTEN='[]' \
        SWITCHBOARD_STOMP_WS_LISTEN='[]' SWITCHBOARD_PROMETHEUS_LISTEN='[]' \
        SWITCHBOARD_HTTP_LISTEN="[\"127.0.0.1:1587$i\"]" SWITCHBOARD_CLUSTER_NODE_NAME="n$i@bench" \
        SWITCHBOARD_CLUSTER_LISTEN="127.0.0.1:2587$i" SWITCHBOARD_CLUSTER_SEEDS="$seeds" \
        SWITCHBOARD_CLUSTER_COOKIE=bench "$BIN" serve >"$WORK/n$i.log" 2>&1 &
    PID[$i]=$!
    wait_port "127.0.0.1:587$i" 30
}

for i in 1 2 3; do start_node "$i"; done
# Until node 1's cluster has three voters.
for _ in $(seq 100); do
    n=$(curl -s -u guest:guest http://127.0.0.1:15871/api/nodes | grep -o '"voter":true' | wc -l)
    [[ $n == 3 ]] && break
    sleep 0.2
done
leader_of() { # queue: the node number of its leader, as node $2 lists it
    curl -s -u guest:guest "http://127.0.0.1:1587$2/api/queues/%2F/$1" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"].split("@")[0][1:])'
}

# Declared on n1, the first replica, which starts the group and so leads it.
curl -s -u guest:guest -X PUT -H 'content-type: application/json' \
    -d '{"durable":true,"arguments":{"x-queue-type":"quorum"}}' \
    http://127.0.0.1:15871/api/queues/%2F/qq-bench
for _ in $(seq 100); do
    [[ $(leader_of qq-bench 1 2>/dev/null || true) == 1 ]] && break
    sleep 0.1
done
sleep 0.5 # the leader serves once it has applied what was committed before its term
echo "== confirmed publishing, 1 publisher, 16 B, confirm window 1000, into a quorum queue (leader n1)"
"$BIN" bench amqp --addr 127.0.0.1:5871 --queue-arg x-queue-type=quorum --queue qq-bench --persistent \
    --confirm 1000 --size 16 --duration 10 --publishers 1 --consumers 1
echo "== the same, 4 publishers"
"$BIN" bench amqp --addr 127.0.0.1:5871 --queue-arg x-queue-type=quorum --queue qq-bench --persistent \
    --confirm 1000 --size 16 --duration 10 --publishers 4 --consumers 1
echo "== confirm latency at a fixed 1,000 msg/s (end-to-end latency: a quorum queue delivers only committed messages)"
"$BIN" bench amqp --addr 127.0.0.1:5871 --queue-arg x-queue-type=quorum --queue qq-bench --persistent \
    --confirm 1000 --size 16 --duration 10 --rate 1000

echo "== failover: kill -9 the leader, time until a confirm from the new leader"
l=$(leader_of qq-bench 2)
kill -9 "${PID[$l]}"
unset "PID[$l]"
start=$(date +%s.%N)
other=$(( l % 3 + 1 ))
for _ in $(seq 300); do
    nl=$(leader_of qq-bench "$other" 2>/dev/null || true)
    if [[ -n $nl && $nl != "$l" ]]; then
        if "$BIN" bench amqp --addr "127.0.0.1:587$nl" --queue-arg x-queue-type=quorum --queue qq-bench \
            --persistent --confirm 1 --messages 1 --duration 5 --drain-timeout 5 >/dev/null 2>&1; then
            break
        fi
    fi
    sleep 0.05
done
end=$(date +%s.%N)
echo "old leader n$l, new leader n$nl, first confirm after $(python3 -c "print(round($end - $start, 2))") s"
