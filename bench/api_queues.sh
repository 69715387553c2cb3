#!/usr/bin/env bash
# The cost of one `GET /api/queues` (and of its first sorted page) with N queues (default
# 10,000) on a release build: starts the broker on free ports with a fresh data directory,
# declares N durable queues through the management API (one keep-alive connection), then times
# five calls of each with curl and prints every time_total.
#   cargo build --release --bin switchboard && bench/api_queues.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
BIN=target/release/switchboard
DIR=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
cat >"$DIR/switchboard.toml" <<TOML
[server]
data_dir = "$DIR/data"
disk_free_limit_bytes = 0
[amqp]
listen = ["127.0.0.1:0"]
[mqtt]
listen = ["127.0.0.1:0"]
ws_listen = []
[stomp]
listen = ["127.0.0.1:0"]
ws_listen = []
[http]
listen = ["127.0.0.1:0"]
[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
[[vhosts]]
name = "/"
TOML
"$BIN" serve --config "$DIR/switchboard.toml" --ports-file "$DIR/ports.json" --log-level warn &
PID=$!
for _ in $(seq 100); do [[ -s "$DIR/ports.json" ]] && break; sleep 0.1; done
HTTP=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http"][0])' "$DIR/ports.json")
python3 - "$HTTP" "$N" <<'PY'
import base64, http.client, sys
host, port = sys.argv[1].rsplit(":", 1)
conn = http.client.HTTPConnection(host, int(port))
auth = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode(),
        "Content-Type": "application/json"}
for i in range(int(sys.argv[2])):
    conn.request("PUT", f"/api/queues/%2F/bench-{i:06d}", body="{}", headers=auth)
    r = conn.getresponse(); r.read()
    assert r.status in (201, 204), r.status
PY
echo "GET /api/queues with $N queues (seconds):"
for _ in 1 2 3 4 5; do
    curl -s -o /dev/null -u guest:guest -w '%{time_total} %{size_download}B\n' "http://$HTTP/api/queues"
done
echo "GET /api/queues?page=1&page_size=100&sort=name (seconds):"
for _ in 1 2 3 4 5; do
    curl -s -o /dev/null -u guest:guest -w '%{time_total}\n' "http://$HTTP/api/queues?page=1&page_size=100&sort=name"
done
