#!/usr/bin/env bash
# What idle quorum queues cost: a 3-node Switchboard cluster (release build, BIN= another),
# its CPU (ms per second over 10 s) and RSS per node with no queue, then with N quorum queues
# (declared through node 1's HTTP API) and no traffic. Each queue is a Raft group whose
# leader sends heartbeats to its followers and whose members watch their leader.
#
#   bench/idle_quorum.sh 200
#
# Ports are fixed and away from the standard ones: AMQP 36731-36733, HTTP 36741-36743,
# cluster 36751-36753 (as bench/mqtt_cluster.sh: not both at once). The nodes are stopped and
# their data removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
BIN=${BIN:-target/release/switchboard}
W=$(mktemp -d)
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
pids=()
for i in 1 2 3; do
  seeds='[]'; [ $i = 1 ] || seeds='["127.0.0.1:36751"]'
  env SWITCHBOARD_SERVER_DATA_DIR=$W/n$i SWITCHBOARD_MQTT_LISTEN='[]' SWITCHBOARD_AMQP_LISTEN="[\"127.0.0.1:3673$i\"]" \
    SWITCHBOARD_HTTP_LISTEN="[\"127.0.0.1:3674$i\"]" SWITCHBOARD_STOMP_LISTEN='[]' SWITCHBOARD_MQTT_WS_LISTEN='[]' \
    SWITCHBOARD_STOMP_WS_LISTEN='[]' SWITCHBOARD_PROMETHEUS_LISTEN='[]' SWITCHBOARD_CLUSTER_NODE_NAME="iq$i@local" \
    SWITCHBOARD_CLUSTER_LISTEN="127.0.0.1:3675$i" SWITCHBOARD_CLUSTER_SEEDS="$seeds" SWITCHBOARD_CLUSTER_COOKIE=x \
    SWITCHBOARD_LOG=warn "$BIN" serve > $W/log$i 2>&1 &
  pids+=($!)
done
. bench/lib.sh
await_three_nodes 127.0.0.1:36741 60 || { echo "the cluster did not form" >&2; exit 1; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
measure() {
  local a=() b=() t=10
  for p in "${pids[@]}"; do a+=($(cpu $p)); done
  sleep $t
  for p in "${pids[@]}"; do b+=($(cpu $p)); done
  local out=""
  for k in 0 1 2; do
    local rss=$(awk '/VmRSS/{print int($2/1024)}' /proc/${pids[$k]}/status)
    out+=" node$((k+1)): $(( (b[k]-a[k]) * 10 / t ))ms/s ${rss}MiB;"
  done
  echo "$1:$out"
}
measure "idle, 0 quorum queues"
python3 - "$N" <<'PY'
import sys, json, urllib.request, base64
n = int(sys.argv[1])
auth = base64.b64encode(b"guest:guest").decode()
for i in range(n):
    req = urllib.request.Request(f"http://127.0.0.1:36741/api/queues/%2F/iq-{i}", method="PUT",
        data=json.dumps({"durable": True, "arguments": {"x-queue-type": "quorum"}}).encode(),
        headers={"Authorization": "Basic " + auth, "content-type": "application/json"})
    urllib.request.urlopen(req).read()
PY
sleep 3
measure "idle, $N quorum queues"
