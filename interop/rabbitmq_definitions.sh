#!/usr/bin/env bash
# Definitions both ways between a real RabbitMQ and Switchboard. Not part of CI (it needs
# rabbitmq-server and ~1 min); like interop/peers.sh, run by hand:
#
#   interop/rabbitmq_definitions.sh [--write-fixture]
#
# 1. Starts RabbitMQ (the Debian rabbitmq-server package; installed with apt-get when missing)
#    with its own directories under /tmp, on free ports, with the management plugin.
# 2. Declares a representative set through RabbitMQ's HTTP API: vhosts, users with tags,
#    permissions, topic permissions, exchanges of each type, queues with arguments, bindings
#    with arguments (queue and exchange destinations), policies.
# 3. Exports it from RabbitMQ, imports that into Switchboard, exports from Switchboard and
#    compares the two exports object by object.
# 4. The reverse: resets RabbitMQ, imports Switchboard's export into it, exports again and
#    compares.
# With --write-fixture, RabbitMQ's export becomes tests/fixtures/rabbitmq-definitions.json (read
# by tests/management_api.rs, definitions_exported_by_rabbitmq_3_10_import_object_by_object).
#
# Env: SWITCHBOARD_BIN  the broker binary (default: target/debug/switchboard, built if missing)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${SWITCHBOARD_BIN:-$REPO_ROOT/target/debug/switchboard}"
WRITE_FIXTURE=0
[[ "${1:-}" == "--write-fixture" ]] && WRITE_FIXTURE=1

if ! command -v rabbitmqctl >/dev/null || [[ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
    apt-get install -y rabbitmq-server >/dev/null
fi
if [[ ! -x "$BIN" ]]; then
    (cd "$REPO_ROOT" && cargo build --quiet --bin switchboard) </dev/null
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

work="$(mktemp -d /tmp/sb-rabbitmq-defs.XXXXXX)"
node="sbdefs$$@localhost"
amqp_port=$(free_port)
mgmt_port=$(free_port)
dist_port=$(free_port)
rmq_env=(
    HOME="$work"
    RABBITMQ_NODENAME="$node"
    RABBITMQ_MNESIA_BASE="$work/mnesia"
    RABBITMQ_LOG_BASE="$work/log"
    RABBITMQ_PID_FILE="$work/rabbitmq.pid"
    RABBITMQ_CONFIG_FILE="$work/rabbitmq.conf"
    RABBITMQ_ADVANCED_CONFIG_FILE="$work/advanced.config"
    RABBITMQ_ENABLED_PLUGINS_FILE="$work/enabled_plugins"
    RABBITMQ_DIST_PORT="$dist_port"
)
mkdir -p "$work/mnesia" "$work/log"
cat >"$work/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$amqp_port
management.tcp.port = $mgmt_port
management.tcp.ip = 127.0.0.1
EOF
echo "[]." >"$work/advanced.config"
echo "[rabbitmq_management]." >"$work/enabled_plugins"

rmqctl() { env "${rmq_env[@]}" /usr/lib/rabbitmq/bin/rabbitmqctl -n "$node" "$@"; }

broker=""
cleanup() {
    rmqctl stop >/dev/null 2>&1 || true
    [[ -n "$broker" ]] && { kill "$broker" 2>/dev/null; wait "$broker" 2>/dev/null; }
    rm -rf "$work"
}
trap cleanup EXIT

echo "== starting RabbitMQ ($node, AMQP $amqp_port, HTTP $mgmt_port)"
env "${rmq_env[@]}" /usr/lib/rabbitmq/bin/rabbitmq-server >"$work/rabbitmq.out" 2>&1 &
rmqctl wait "$work/rabbitmq.pid" --timeout 120 >/dev/null || { cat "$work/rabbitmq.out" >&2; exit 1; }
RMQ="http://127.0.0.1:$mgmt_port"
for _ in $(seq 1 100); do
    curl -sf -u guest:guest "$RMQ/api/overview" >/dev/null && break
    sleep 0.3
done
rabbitmq_version=$(curl -sf -u guest:guest "$RMQ/api/overview" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rabbitmq_version"])')
echo "   RabbitMQ $rabbitmq_version"

api() { # base method path [json]
    local base=$1 method=$2 path=$3 body=${4:-}
    local args=(-sS -f -u guest:guest -X "$method" -H 'content-type: application/json')
    [[ -n "$body" ]] && args+=(-d "$body")
    curl "${args[@]}" "$base$path" >/dev/null || { echo "FAILED: $method $base$path $body" >&2; exit 1; }
}

echo "== declaring the set in RabbitMQ"
api "$RMQ" PUT /api/vhosts/shop '{"description":"orders and payments","tags":["prod"]}'
api "$RMQ" PUT /api/vhosts/iot '{}'
# RabbitMQ's own hash of each password: the users must log in on Switchboard after the import.
api "$RMQ" PUT /api/users/app '{"password":"app-secret","tags":""}'
api "$RMQ" PUT /api/users/ops '{"password":"ops-secret","tags":"administrator"}'
api "$RMQ" PUT /api/users/watcher '{"password":"watch","tags":"monitoring"}'
api "$RMQ" PUT /api/users/lead '{"password":"lead","tags":"management,policymaker"}'
api "$RMQ" PUT /api/permissions/shop/app '{"configure":"^orders","write":"^orders","read":"^(orders|payments)"}'
api "$RMQ" PUT /api/permissions/shop/ops '{"configure":".*","write":".*","read":".*"}'
api "$RMQ" PUT /api/permissions/iot/watcher '{"configure":"","write":"","read":".*"}'
api "$RMQ" PUT /api/permissions/shop/guest '{"configure":".*","write":".*","read":".*"}'
api "$RMQ" PUT /api/permissions/iot/guest '{"configure":".*","write":".*","read":".*"}'
api "$RMQ" PUT /api/topic-permissions/shop/app '{"exchange":"orders.topic","write":"^order\\.","read":".*"}'
api "$RMQ" PUT /api/topic-permissions/iot/watcher '{"exchange":"amq.topic","write":"^$","read":"^sensors\\."}'
api "$RMQ" PUT /api/exchanges/shop/orders.direct '{"type":"direct","durable":true}'
api "$RMQ" PUT /api/exchanges/shop/orders.fanout '{"type":"fanout","durable":true,"auto_delete":false}'
api "$RMQ" PUT /api/exchanges/shop/orders.topic '{"type":"topic","durable":true,"arguments":{"alternate-exchange":"orders.unrouted"}}'
api "$RMQ" PUT /api/exchanges/shop/orders.unrouted '{"type":"fanout","durable":true}'
api "$RMQ" PUT /api/exchanges/shop/orders.headers '{"type":"headers","durable":true}'
api "$RMQ" PUT /api/exchanges/shop/orders.internal '{"type":"topic","durable":true,"internal":true}'
api "$RMQ" PUT /api/exchanges/shop/orders.dlx '{"type":"direct","durable":true}'
api "$RMQ" PUT /api/queues/shop/orders '{"durable":true,"arguments":{"x-queue-type":"classic","x-max-length":10000,"x-overflow":"reject-publish","x-dead-letter-exchange":"orders.dlx","x-dead-letter-routing-key":"dead"}}'
api "$RMQ" PUT /api/queues/shop/orders.priority '{"durable":true,"arguments":{"x-max-priority":9,"x-message-ttl":60000}}'
api "$RMQ" PUT /api/queues/shop/orders.dead '{"durable":true,"arguments":{"x-max-length-bytes":1048576,"x-expires":86400000}}'
api "$RMQ" PUT /api/queues/shop/orders.eu '{"durable":true,"arguments":{"x-single-active-consumer":true}}'
api "$RMQ" PUT /api/queues/shop/payments '{"durable":true,"auto_delete":false}'
api "$RMQ" PUT /api/queues/shop/orders.unrouted '{"durable":true}'
api "$RMQ" PUT /api/queues/iot/readings '{"durable":true,"arguments":{"x-message-ttl":5000}}'
api "$RMQ" POST /api/bindings/shop/e/orders.topic/q/orders '{"routing_key":"order.*"}'
api "$RMQ" POST /api/bindings/shop/e/orders.topic/q/orders.eu '{"routing_key":"order.eu.#"}'
api "$RMQ" POST /api/bindings/shop/e/orders.direct/q/payments '{"routing_key":"pay"}'
api "$RMQ" POST /api/bindings/shop/e/orders.fanout/q/orders.priority '{"routing_key":""}'
api "$RMQ" POST /api/bindings/shop/e/orders.dlx/q/orders.dead '{"routing_key":"dead"}'
api "$RMQ" POST /api/bindings/shop/e/orders.unrouted/q/orders.unrouted '{"routing_key":""}'
api "$RMQ" POST /api/bindings/shop/e/orders.headers/q/orders.eu '{"routing_key":"","arguments":{"x-match":"all","region":"eu","priority":1}}'
api "$RMQ" POST /api/bindings/shop/e/orders.headers/q/payments '{"routing_key":"","arguments":{"x-match":"any","kind":"payment","refund":true}}'
api "$RMQ" POST /api/bindings/shop/e/orders.topic/e/orders.fanout '{"routing_key":"order.bulk.#"}'
api "$RMQ" POST /api/bindings/iot/e/amq.topic/q/readings '{"routing_key":"sensors.#"}'
api "$RMQ" PUT /api/policies/shop/dlx '{"pattern":"^payments$","apply-to":"queues","priority":1,"definition":{"dead-letter-exchange":"orders.dlx","message-ttl":3600000}}'
api "$RMQ" PUT /api/policies/shop/limits '{"pattern":"^orders\\.","apply-to":"queues","priority":0,"definition":{"max-length":50000,"overflow":"drop-head"}}'
api "$RMQ" PUT /api/policies/iot/expiry '{"pattern":".*","apply-to":"queues","priority":2,"definition":{"expires":3600000,"max-length-bytes":10485760}}'

curl -sf -u guest:guest "$RMQ/api/definitions" | python3 -m json.tool --indent 2 >"$work/from-rabbitmq.json"
if [[ $WRITE_FIXTURE == 1 ]]; then
    cp "$work/from-rabbitmq.json" "$REPO_ROOT/tests/fixtures/rabbitmq-definitions.json"
    echo "   wrote tests/fixtures/rabbitmq-definitions.json"
fi

echo "== starting Switchboard"
sb_http=$(free_port)
cat >"$work/switchboard.toml" <<EOF
[server]
data_dir = "$work/sb-data"
memory_high_watermark_bytes = 0
disk_free_limit_bytes = 0
[amqp]
listen = ["127.0.0.1:0"]
[mqtt]
listen = []
[stomp]
listen = []
[http]
listen = ["127.0.0.1:$sb_http"]
[prometheus]
listen = []
[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]
EOF
"$BIN" serve --config "$work/switchboard.toml" >"$work/switchboard.log" 2>&1 &
broker=$!
SB="http://127.0.0.1:$sb_http"
for _ in $(seq 1 100); do
    curl -sf -u guest:guest "$SB/api/overview" >/dev/null && break
    kill -0 "$broker" 2>/dev/null || { cat "$work/switchboard.log" >&2; exit 1; }
    sleep 0.1
done

# Compares two exports object by object: every vhost, user (tags; the hash too, except guest,
# which each side seeds itself), permission, topic permission, exchange, queue, binding and
# policy of one must be in the other with the same fields. The exchanges, queues and bindings
# RabbitMQ keeps for itself do not count. Prints each difference and exits 1 on any.
compare() { # a.json b.json label
    python3 - "$1" "$2" "$3" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
label = sys.argv[3]

def norm_args(x):
    return json.dumps(x or {}, sort_keys=True)

keys = {
    "vhosts": lambda o: (o["name"],),
    "users": lambda o: (o["name"],),
    "permissions": lambda o: (o["user"], o["vhost"]),
    "topic_permissions": lambda o: (o["user"], o["vhost"], o["exchange"]),
    "exchanges": lambda o: (o["vhost"], o["name"]),
    "queues": lambda o: (o["vhost"], o["name"]),
    "bindings": lambda o: (o["vhost"], o["source"], o["destination_type"], o["destination"],
                           o["routing_key"], norm_args(o.get("arguments"))),
    "policies": lambda o: (o["vhost"], o["name"]),
}
fields = {
    "vhosts": [],
    "users": ["tags", "password_hash", "hashing_algorithm"],
    "permissions": ["configure", "write", "read"],
    "topic_permissions": ["write", "read"],
    "exchanges": ["type", "durable", "auto_delete", "internal", "arguments"],
    "queues": ["durable", "auto_delete", "arguments"],
    "bindings": [],
    "policies": ["pattern", "apply-to", "priority", "definition"],
}

def tags(v):
    if isinstance(v, str):
        v = [t for t in v.split(",") if t]
    return sorted(v)

problems = 0
counts = []
for kind, key in keys.items():
    ia = {key(o): o for o in a.get(kind, [])}
    ib = {key(o): o for o in b.get(kind, [])}
    counts.append(f"{len(ia)} {kind}")
    for k in sorted(set(ia) | set(ib)):
        if k not in ib:
            print(f"  {label}: {kind} {k} missing from the second"); problems += 1; continue
        if k not in ia:
            print(f"  {label}: {kind} {k} only in the second"); problems += 1; continue
        for f in fields[kind]:
            if kind == "users" and f != "tags" and k == ("guest",):
                continue
            va, vb = ia[k].get(f), ib[k].get(f)
            if f == "tags":
                va, vb = tags(va), tags(vb)
            if f == "arguments":
                va, vb = va or {}, vb or {}
            if va != vb:
                print(f"  {label}: {kind} {k} {f}: {va!r} != {vb!r}"); problems += 1
print(f"  {label}: compared {', '.join(counts)}: {problems} difference(s)")
sys.exit(1 if problems else 0)
PY
}

status=0
echo "== RabbitMQ export -> Switchboard"
api "$SB" POST /api/definitions "@$work/from-rabbitmq.json"
curl -sf -u guest:guest "$SB/api/definitions" >"$work/from-switchboard.json"
compare "$work/from-rabbitmq.json" "$work/from-switchboard.json" "rabbitmq->switchboard" || status=1
# The imported users log in with their RabbitMQ passwords (RabbitMQ's hashes, kept).
for u in app:app-secret ops:ops-secret watcher:watch lead:lead; do
    curl -sf -u "$u" "$SB/api/whoami" >/dev/null || { echo "  login as ${u%%:*} failed"; status=1; }
done

echo "== Switchboard export -> RabbitMQ (reset first)"
rmqctl stop_app >/dev/null
rmqctl reset >/dev/null
rmqctl start_app >/dev/null
for _ in $(seq 1 100); do
    curl -sf -u guest:guest "$RMQ/api/overview" >/dev/null && break
    sleep 0.3
done
api "$RMQ" POST /api/definitions "@$work/from-switchboard.json"
curl -sf -u guest:guest "$RMQ/api/definitions" >"$work/back-in-rabbitmq.json"
compare "$work/from-switchboard.json" "$work/back-in-rabbitmq.json" "switchboard->rabbitmq" || status=1
# Switchboard's export keeps RabbitMQ's hashes: the users log in on RabbitMQ again (its HTTP API
# admits only users with a management tag, so `app` is not tried there).
for u in ops:ops-secret watcher:watch lead:lead; do
    curl -sf -u "$u" "$RMQ/api/whoami" >/dev/null || { echo "  login as ${u%%:*} failed on RabbitMQ"; status=1; }
done

if [[ $status == 0 ]]; then echo "== OK (RabbitMQ $rabbitmq_version)"; else echo "== DIFFERENCES (RabbitMQ $rabbitmq_version)"; fi
exit $status
