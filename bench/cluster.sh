#!/usr/bin/env bash
# Cluster benchmarks on this one machine: a 3-node RabbitMQ cluster (quorum queues) against a
# 3-node Switchboard cluster, with `switchboard bench amqp` as the one load generator (one
# publisher with confirms, window 1,000, one consumer acking manually, prefetch 200,
# persistent messages). Per side, in every round:
#
#   quorum 16 B, quorum 1 KiB      x-queue-type: quorum on the cluster, through node 1
#   classic 16 B / 1 KiB           a durable classic queue on the cluster, through node 1
#   classic 16 B / 1 KiB single    the same on a single node (not clustered)
#   declare, NODE                  `bench declare`: 1,000 durable classic queues declared over 16
#                                  connections to NODE (one declare in flight on each), each
#                                  declared again, then deleted: on the single node, and on the
#                                  cluster through node 1 and node 2 (where each change is a
#                                  commit of the metadata group)
#   failover                       a fresh quorum queue declared through node 2 (RabbitMQ puts
#                                  its leader there), confirmed publishing through a node
#                                  that is not its leader, the leader's node killed with
#                                  SIGKILL --kill-after seconds in: the time from the kill to
#                                  the first confirm of a message published after it; the
#                                  node is restarted on its data before the next round
#
# msg/s (consumed), confirm latency p50/p99 (send -> ack), broker CPU-seconds per million
# messages (summed over the three nodes), peak RSS of each node; medians over the rounds.
#
#   bench/cluster.sh                                   # both sides, 3 rounds of 10 s
#   bench/cluster.sh --only switchboard --rounds 1 --duration 5
#   bench/cluster.sh --only rabbitmq --out results.jsonl
#   bench/cluster.sh --only switchboard --failover-only  # only the failover rows
#   bench/cluster.sh --declare-only                    # only the declare rows
#   bench/cluster.sh --quorum-only                     # only the quorum throughput rows
#
# A side's quorum and failover rows print "not available" when the broker cannot make a
# quorum queue: the declare is refused, or the queue it made has no leader in the management
# API (`leader` in /api/queues/VHOST/NAME for Switchboard, `rabbitmqctl list_queues leader`
# for RabbitMQ) - never a classic queue's figures under a quorum label.
#
# Needs a release build (`cargo build --release`; BIN= another switchboard binary), and
# RabbitMQ from Debian's rabbitmq-server (installed with apt-get when missing, as root), or
# the RabbitMQ side is skipped. Ports are fixed and away from the standard ones and from
# RabbitMQ CLI tools' 35672-35682: RabbitMQ AMQP 36672-36675, distribution 36682-36685, its
# own port mapper (epmd) on 36369; Switchboard AMQP 36691-36694, HTTP 36701-36704, cluster
# 36711-36713. Every broker started here is stopped on exit and its data removed; the results
# (one bench JSON object per line, with "side", "label", "round", "loadavg" added) stay in
# --out (default: a file under /tmp, named at the end).
set -euo pipefail
export RUST_BACKTRACE=0

cd "$(dirname "$0")/.."
ONLY=${ONLY:-}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
OUT=
# Failover runs: seconds of publishing in all, and before the kill.
FAILOVER_DURATION=${FAILOVER_DURATION:-20}
KILL_AFTER=${KILL_AFTER:-5}
# Message sizes of the throughput rows (none with --failover-only or --declare-only).
SIZES="16 1024"
FAILOVER=yes
DECLARE=yes
# Classic-queue rows and the single node (none with --quorum-only).
CLASSIC=yes
DECLARE_QUEUES=${DECLARE_QUEUES:-1000}
DECLARE_CHANNELS=${DECLARE_CHANNELS:-16}
CONFIRM=${CONFIRM:-1000}
PREFETCH=${PREFETCH:-200}
while (($#)); do
    case $1 in
    --only) ONLY=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --failover-only) SIZES=; DECLARE=; shift ;;
    --declare-only) SIZES=; FAILOVER=; shift ;;
    --quorum-only) CLASSIC=; DECLARE=; FAILOVER=; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "cluster.sh: unknown option $1 (--only rabbitmq|switchboard, --duration S, --rounds N, --out FILE, --failover-only, --declare-only, --quorum-only)" >&2; exit 2 ;;
    esac
done
case ${ONLY:-both} in
both) SIDES="rabbitmq switchboard" ;;
rabbitmq | switchboard) SIDES=$ONLY ;;
*) echo "cluster.sh: --only takes rabbitmq or switchboard" >&2; exit 2 ;;
esac

BIN=${BIN:-target/release/switchboard}
[[ -x $BIN ]] || { echo "cluster.sh: no $BIN: run cargo build --release" >&2; exit 1; }
BIN=$(realpath "$BIN")
WORK=$(mktemp -d /tmp/switchboard-cluster-bench.XXXXXX)
RESULTS=${OUT:-$WORK/results.jsonl}
: >"$RESULTS"
RESULTS=$(realpath "$RESULTS")

log() { echo "cluster.sh: $*" >&2; }

# shellcheck source=bench/lib.sh
. bench/lib.sh

# Node i (1-3: the cluster, 4: the single node) of each side.
RB_NODE() { echo "sbcluster$1@localhost"; }
RB_AMQP() { echo "127.0.0.1:$((36671 + $1))"; }
SB_AMQP() { echo "127.0.0.1:$((36690 + $1))"; }
SB_HTTP() { echo "127.0.0.1:$((36700 + $1))"; }
SB_CLUSTER() { echo "127.0.0.1:$((36710 + $1))"; }
SB_NAME() { echo "sbcluster$1@local"; }
export ERL_EPMD_PORT=36369
COOKIE=switchboard-cluster-bench-$RANDOM$RANDOM
declare -A PID  # "rabbitmq1".."rabbitmq4", "switchboard1".."switchboard4"
OWN_EPMD=

# ---- RabbitMQ ------------------------------------------------------------------------------

have_rabbitmq() {
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] && return 0
    command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]] || return 1
    log "installing rabbitmq-server with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server; } \
        </dev/null >/dev/null 2>&1 || return 1
    # The package starts its own node on the standard ports; ours run apart from it.
    systemctl stop rabbitmq-server >/dev/null 2>&1 || service rabbitmq-server stop >/dev/null 2>&1 || true
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]
}

rabbitmqctl() { # node-index args...
    local i=$1
    shift
    HOME=$WORK/rabbitmq$i timeout 120 /usr/lib/rabbitmq/bin/rabbitmqctl -n "$(RB_NODE "$i")" -q "$@"
}

start_epmd() {
    [[ -n $OWN_EPMD ]] && return 0
    epmd -port "$ERL_EPMD_PORT" -address 127.0.0.1 >/dev/null 2>&1 &
    OWN_EPMD=$!
    wait_port "127.0.0.1:$ERL_EPMD_PORT" 10 || { log "epmd did not start"; exit 1; }
}

# Starts RabbitMQ node i on its directory (kept across a restart: the node rejoins from it),
# with the run's Erlang cookie and its distribution on 127.0.0.1 only.
start_rabbitmq_node() {
    local i=$1 dir=$WORK/rabbitmq$1
    mkdir -p "$dir"
    if [[ ! -f $dir/.erlang.cookie ]]; then
        (umask 077 && echo "$COOKIE" >"$dir/.erlang.cookie")
        cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = $(RB_AMQP "$i")
loopback_users.guest = true
CONF
    fi
    rm -f "$dir/pid"
    RABBITMQ_DIST_PORT=$((36681 + i)) \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        run_rabbitmq "$(RB_NODE "$i")" "$dir" "[]" "rabbitmq$i"
}

start_rabbitmq_cluster() {
    start_epmd
    local i
    for i in 1 2 3; do start_rabbitmq_node "$i"; done
    for i in 2 3; do
        rabbitmqctl "$i" stop_app
        rabbitmqctl "$i" join_cluster "$(RB_NODE 1)"
        rabbitmqctl "$i" start_app
    done
    rabbitmqctl 1 cluster_status --formatter json | python3 -c '
import json, sys
s = json.load(sys.stdin)
assert len(s["running_nodes"]) == 3, s' || { log "RabbitMQ cluster did not form"; exit 1; }
}

stop_rabbitmq_node() {
    local i=$1
    [[ -n ${PID[rabbitmq$i]:-} ]] || return 0
    rabbitmqctl "$i" stop >/dev/null 2>&1 || kill -9 "${PID[rabbitmq$i]}" 2>/dev/null || true
    PID[rabbitmq$i]=
}

# The node index holding quorum queue $1's leader, or nothing.
rabbitmq_leader() {
    rabbitmqctl 1 list_queues --no-table-headers name leader 2>/dev/null |
        awk -v q="$1" '$1 == q { sub(/@.*/, "", $2); sub(/^sbcluster/, "", $2); print $2 }'
}

# Restarts node i after a kill and waits until the cluster runs it again.
restart_rabbitmq_node() {
    start_rabbitmq_node "$1"
    rabbitmqctl 1 await_online_nodes 3 --timeout 120 >/dev/null 2>&1 || true
}

# ---- Switchboard ---------------------------------------------------------------------------

# Starts Switchboard node i; $2: "cluster" (node of three, seeds node 1) or "single".
start_switchboard_node() {
    local i=$1 mode=$2 seeds='[]' listen=''
    if [[ $mode == cluster ]]; then
        listen=$(SB_CLUSTER "$i")
        [[ $i == 1 ]] || seeds="[\"$(SB_CLUSTER 1)\"]"
    fi
    env SWITCHBOARD_SERVER_DATA_DIR="$WORK/switchboard$i" \
        SWITCHBOARD_AMQP_LISTEN="[\"$(SB_AMQP "$i")\"]" SWITCHBOARD_HTTP_LISTEN="[\"$(SB_HTTP "$i")\"]" \
        SWITCHBOARD_MQTT_LISTEN='[]' SWITCHBOARD_STOMP_LISTEN='[]' SWITCHBOARD_MQTT_WS_LISTEN='[]' \
        SWITCHBOARD_STOMP_WS_LISTEN='[]' SWITCHBOARD_PROMETHEUS_LISTEN='[]' \
        SWITCHBOARD_CLUSTER_NODE_NAME="$(SB_NAME "$i")" SWITCHBOARD_CLUSTER_LISTEN="$listen" \
        SWITCHBOARD_CLUSTER_SEEDS="$seeds" SWITCHBOARD_CLUSTER_COOKIE="$COOKIE" \
        SWITCHBOARD_LOG=warn "$BIN" serve >>"$WORK/switchboard$i.log" 2>&1 &
    PID[switchboard$i]=$!
    wait_port "$(SB_AMQP "$i")" 60 || { log "switchboard node $i did not start"; exit 1; }
}

# Waits until node 1's /api/nodes lists three running members with a leader.
await_switchboard_cluster() {
    await_three_nodes "$(SB_HTTP 1)" 120 || { log "Switchboard cluster did not form"; exit 1; }
}

start_switchboard_cluster() {
    local i
    for i in 1 2 3; do start_switchboard_node "$i" cluster; done
    await_switchboard_cluster
}

stop_switchboard_node() {
    local i=$1
    [[ -n ${PID[switchboard$i]:-} ]] || return 0
    kill "${PID[switchboard$i]}" 2>/dev/null || true
    wait "${PID[switchboard$i]}" 2>/dev/null || true
    PID[switchboard$i]=
}

# The node index holding quorum queue $1's leader (the management API's `leader`), or nothing.
switchboard_leader() {
    curl -sf -u guest:guest "http://$(SB_HTTP 1)/api/queues/%2F/$1" 2>/dev/null | python3 -c '
import json, re, sys
m = re.match(r"sbcluster(\d)@", json.load(sys.stdin).get("leader") or "")
print(m.group(1) if m else "")' 2>/dev/null || true
}

restart_switchboard_node() {
    # A node restarted on its data directory is a member again without seeds.
    start_switchboard_node "$1" cluster
    await_switchboard_cluster
}

# ---- both ----------------------------------------------------------------------------------

stop_all() {
    local i
    for i in 1 2 3 4; do
        stop_rabbitmq_node "$i"
        stop_switchboard_node "$i"
    done
    [[ -n $OWN_EPMD ]] && kill "$OWN_EPMD" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"/rabbitmq? "$WORK"/switchboard?
}
trap stop_all EXIT

check_ports_free() {
    local p
    for p in "$@"; do
        if (exec 3<>"/dev/tcp/${p%:*}/${p#*:}") 2>/dev/null; then
            log "something already listens on $p"
            exit 1
        fi
    done
}

addr() { if [[ $1 == rabbitmq ]]; then RB_AMQP "$2"; else SB_AMQP "$2"; fi; }
leader_of() { if [[ $1 == rabbitmq ]]; then rabbitmq_leader "$2"; else switchboard_leader "$2"; fi; }
pid_args() { # side node-index...
    local side=$1 i
    shift
    for i in "$@"; do echo "--broker-pid ${PID[$side$i]}"; done
}

QUORUM=(--queue-arg x-queue-type=quorum)
confirmed() { echo "--persistent --confirm $CONFIRM --manual-ack $PREFETCH"; }

# One run: appends the bench's JSON, tagged, to the results; false if the bench failed.
run_bench() { # side label round bench-args...
    local side=$1 label=$2 round=$3 out
    shift 3
    log "round $round: $side: $label"
    if out=$("$BIN" bench amqp --json "$@" 2>"$WORK/last.err"); then
        python3 -c 'import json,sys
r=json.loads(sys.argv[1]); r["side"]=sys.argv[2]; r["label"]=sys.argv[3]; r["round"]=int(sys.argv[4])
r["loadavg"]=float(open("/proc/loadavg").read().split()[0])
for kv in sys.argv[5:]:
    k,v=kv.split("=",1); r[k]=json.loads(v)
print(json.dumps(r))' "$out" "$side" "$label" "$round" "${EXTRA_FIELDS[@]}" >>"$RESULTS"
    else
        log "  failed: $(grep -m1 "^Error" "$WORK/last.err" || tail -n1 "$WORK/last.err")"
        return 1
    fi
}
EXTRA_FIELDS=()

# One `bench declare` run against node $4 of side $1: appends its JSON, tagged, to the results.
run_declare() { # side label round node
    local side=$1 label=$2 round=$3 out
    log "round $round: $side: $label"
    if out=$("$BIN" bench declare --addr "$(addr "$side" "$4")" --queues "$DECLARE_QUEUES" \
        --channels "$DECLARE_CHANNELS" --json 2>"$WORK/last.err"); then
        python3 -c 'import json,sys
r=json.loads(sys.argv[1]); r["side"]=sys.argv[2]; r["label"]=sys.argv[3]; r["round"]=int(sys.argv[4])
r["loadavg"]=float(open("/proc/loadavg").read().split()[0])
print(json.dumps(r))' "$out" "$side" "$label" "$round" >>"$RESULTS"
    else
        log "  failed: $(grep -m1 "^Error" "$WORK/last.err" || tail -n1 "$WORK/last.err")"
    fi
}

not_available() { # side label why
    echo "{\"side\":\"$1\",\"label\":\"$2\",\"not_available\":\"$3\"}" >>"$RESULTS"
}

# A quorum queue made on node $3 of side $1, named $2; leaves its leader's index in LEADER, or
# fails when the broker could not make one.
make_quorum_queue() {
    local side=$1 queue=$2 node=$3
    LEADER=
    NO_QUORUM="the declare was refused"
    # shellcheck disable=SC2046 # words
    "$BIN" bench amqp --addr "$(addr "$side" "$node")" --queue "$queue" "${QUORUM[@]}" \
        $(confirmed) --messages 100 --duration 10 --json >/dev/null 2>"$WORK/declare.err" || {
        log "  $side: no quorum queue: $(grep -m1 "^Error" "$WORK/declare.err" || true)"
        return 1
    }
    # A leader is elected within seconds of the declare (RabbitMQ's at once).
    local end=$((SECONDS + 15))
    until LEADER=$(leader_of "$side" "$queue") && [[ -n $LEADER ]]; do
        if ((SECONDS >= end)); then
            NO_QUORUM="declared, but the queue has no leader (not a quorum queue)"
            log "  $side: queue $queue: $NO_QUORUM"
            return 1
        fi
        sleep 0.5
    done
}

single_rounds() { # side
    local side=$1 round size
    [[ -n $CLASSIC || -n $DECLARE ]] || return 0
    for round in $(seq "$ROUNDS"); do
        for size in $SIZES; do
            # shellcheck disable=SC2046 # words
            run_bench "$side" "classic $size B, single node" "$round" --addr "$(addr "$side" 4)" \
                --queue cb-classic --size "$size" $(confirmed) --duration "$DURATION" \
                $(pid_args "$side" 4) || true
        done
        [[ -z $DECLARE ]] || run_declare "$side" "declare, single node" "$round" 4
    done
}

cluster_rounds() { # side
    local side=$1 round size quorum=yes NO_QUORUM=
    if [[ -n $SIZES ]]; then make_quorum_queue "$side" cb-quorum 1 || quorum=; fi
    for round in $(seq "$ROUNDS"); do
        for size in $SIZES; do
            if [[ -n $quorum ]]; then
                local now
                now=$(leader_of "$side" cb-quorum) || now=
                EXTRA_FIELDS=("leader=${now:-null}")
                # shellcheck disable=SC2046 # words
                run_bench "$side" "quorum $size B, 3 nodes" "$round" --addr "$(addr "$side" 1)" \
                    --queue cb-quorum "${QUORUM[@]}" --size "$size" $(confirmed) \
                    --duration "$DURATION" $(pid_args "$side" 1 2 3) || true
                EXTRA_FIELDS=()
            else
                not_available "$side" "quorum $size B, 3 nodes" "$NO_QUORUM"
            fi
            [[ -n $CLASSIC ]] || continue
            # shellcheck disable=SC2046 # words
            run_bench "$side" "classic $size B, 3 nodes" "$round" --addr "$(addr "$side" 1)" \
                --queue cb-classic --size "$size" $(confirmed) --duration "$DURATION" \
                $(pid_args "$side" 1 2 3) || true
        done
        if [[ -n $DECLARE ]]; then
            run_declare "$side" "declare, 3 nodes, through node 1" "$round" 1
            run_declare "$side" "declare, 3 nodes, through node 2" "$round" 2
        fi
        [[ -z $FAILOVER ]] || failover "$side" "$round"
    done
}

failover() { # side round
    local side=$1 round=$2 queue=cb-failover-$2 at others=() i NO_QUORUM=
    if ! make_quorum_queue "$side" "$queue" 2; then
        not_available "$side" "failover (kill -9 the leader)" "$NO_QUORUM"
        return 0
    fi
    for i in 1 2 3; do [[ $i == "$LEADER" ]] || others+=("$i"); done
    at=${others[0]}
    EXTRA_FIELDS=("leader=$LEADER" "publisher_node=$at")
    # shellcheck disable=SC2046 # words
    run_bench "$side" "failover (kill -9 the leader)" "$round" --addr "$(addr "$side" "$at")" \
        --queue "$queue" "${QUORUM[@]}" $(confirmed) --duration "$FAILOVER_DURATION" \
        --kill-pid "${PID[$side$LEADER]}" --kill-after "$KILL_AFTER" \
        $(pid_args "$side" "${others[@]}") || true
    EXTRA_FIELDS=()
    log "  restarting $side node $LEADER"
    PID[$side$LEADER]=
    if [[ $side == rabbitmq ]]; then restart_rabbitmq_node "$LEADER"; else restart_switchboard_node "$LEADER"; fi
}

for side in $SIDES; do
    case $side in
    rabbitmq)
        have_rabbitmq || { log "rabbitmq-server not installed: skipped"; continue; }
        check_ports_free "$(RB_AMQP 1)" "$(RB_AMQP 2)" "$(RB_AMQP 3)" "$(RB_AMQP 4)" "127.0.0.1:$ERL_EPMD_PORT"
        start_epmd
        start_rabbitmq_node 4
        single_rounds rabbitmq
        stop_rabbitmq_node 4
        start_rabbitmq_cluster
        cluster_rounds rabbitmq
        for i in 1 2 3; do stop_rabbitmq_node "$i"; done
        ;;
    switchboard)
        check_ports_free "$(SB_AMQP 1)" "$(SB_AMQP 2)" "$(SB_AMQP 3)" "$(SB_AMQP 4)" \
            "$(SB_CLUSTER 1)" "$(SB_CLUSTER 2)" "$(SB_CLUSTER 3)"
        start_switchboard_node 4 single
        single_rounds switchboard
        stop_switchboard_node 4
        start_switchboard_cluster
        cluster_rounds switchboard
        for i in 1 2 3; do stop_switchboard_node "$i"; done
        ;;
    esac
done

# Medians per side and scenario.
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
from collections import OrderedDict

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def fmt(x, spec):
    return "-" if x is None else format(x, spec)

rows = OrderedDict()
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["label"], OrderedDict()).setdefault(r["side"], []).append(r)

print("| scenario | broker | runs | msg/s | confirm p50 / p99 µs | broker CPU-s per million "
      "| peak RSS MiB per node | missing / dup | load avg |")
print("|---|---|---|---|---|---|---|---|---|")
for label, sides in rows.items():
    if label.startswith(("failover", "declare")):
        continue
    for side, rs in sides.items():
        na = [r for r in rs if "not_available" in r]
        rs = [r for r in rs if "not_available" not in r]
        if not rs:
            print(f"| {label} | {side} | 0 | not available ({na[0]['not_available']}) | | | | | |")
            continue
        conf = [(r.get("confirms") or {}).get("latency") or {} for r in rs]
        nodes = [r["broker"].get("nodes") or [r["broker"]] for r in rs]
        rss = [median([n[k]["rss_peak_bytes"] for n in nodes if k < len(n)]) for k in range(max(map(len, nodes)))]
        print(f"| {label} | {side} | {len(rs)} | {fmt(median([r['consume_rate'] for r in rs]), ',.0f')} "
              f"| {fmt(median([c.get('p50_us') for c in conf]), '.0f')} / {fmt(median([c.get('p99_us') for c in conf]), '.0f')} "
              f"| {fmt(median([r['broker']['cpu_seconds_per_million'] for r in rs]), '.2f')} "
              f"| {' / '.join(fmt(x and x / 2**20, '.0f') for x in rss)} "
              f"| {sum(r['missing'] for r in rs)} / {sum(r['duplicates'] for r in rs)} "
              f"| {fmt(median([r['loadavg'] for r in rs]), '.1f')} |")

print()
print(f"| durable queues, one declare in flight per connection | broker | runs | declare /s | declare again /s | delete /s | load avg |")
print("|---|---|---|---|---|---|---|")
for label, sides in rows.items():
    if not label.startswith("declare"):
        continue
    for side, rs in sides.items():
        rate = lambda phase: fmt(median([(r.get(phase) or {}).get("per_second") for r in rs]), ",.0f")
        print(f"| {label} ({rs[0]['queues']:,} queues, {rs[0]['channels']} connections) | {side} | {len(rs)} "
              f"| {rate('declare')} | {rate('redeclare')} | {rate('delete')} "
              f"| {fmt(median([r['loadavg'] for r in rs]), '.1f')} |")

print()
print("| failover | broker | runs | kill -> first confirm of a later publish, ms (each run) | longest time without a confirm, ms | confirmed / nacked | missing / dup |")
print("|---|---|---|---|---|---|---|")
for label, sides in rows.items():
    if not label.startswith("failover"):
        continue
    for side, rs in sides.items():
        na = [r for r in rs if "not_available" in r]
        rs = [r for r in rs if "not_available" not in r]
        if not rs:
            print(f"| {label} | {side} | 0 | not available ({na[0]['not_available']}) | | | |")
            continue
        f = [(r.get("failover") or {}).get("first_confirm_after_kill_ms") for r in rs]
        c = [r.get("confirms") or {} for r in rs]
        each = ", ".join(fmt(x, ",.0f") for x in f)
        print(f"| {label} | {side} | {len(rs)} | {fmt(median(f), ',.0f')} ({each}) "
              f"| {fmt(median([x.get('longest_gap_ms') for x in c]), ',.0f')} "
              f"| {sum(x.get('confirmed', 0) for x in c)} / {sum(x.get('nacked', 0) for x in c)} "
              f"| {sum(r['missing'] for r in rs)} / {sum(r['duplicates'] for r in rs)} |")
PY
echo
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); results: $RESULTS"
