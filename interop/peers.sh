#!/usr/bin/env bash
# Runs the clients' own test suites against Switchboard: Eclipse Paho's MQTT interoperability
# tests (interoperability/client_test.py for 3.1.1, client_test5.py for 5.0) and pika 1.4.4's
# acceptance tests. Not part of CI: both suites use fixed ports (pika 5672, Paho 1883), three of
# pika's look up www.google.com (left out where that name does not resolve), and a full run
# takes ~6 min.
# Their code is fetched into PEERS_DIR, outside this repository, and never copied into it.
#
#   interop/peers.sh [paho|pika]...     (default: both)
#
# Env:
#   PEERS_DIR        where the checkouts and the venv live (default ~/.cache/switchboard-peers)
#   SWITCHBOARD_BIN  the broker binary (default: target/debug/switchboard, built if missing)
#   PAHO_GIT, PIKA_GIT  the repositories to clone (default: their GitHub ones; a local mirror
#                    of either works without network access)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$HOME/.cache/switchboard-peers}"
PAHO_COMMIT=9d7bb80bb8b9d9cfc0b52f8cb4c1916401281103
PIKA_TAG=1.4.4
PAHO_GIT="${PAHO_GIT:-https://github.com/eclipse/paho.mqtt.testing}"
PIKA_GIT="${PIKA_GIT:-https://github.com/pika/pika}"
BIN="${SWITCHBOARD_BIN:-$REPO_ROOT/target/debug/switchboard}"
SUITES=("$@")
[[ ${#SUITES[@]} -gt 0 ]] || SUITES=(paho pika)

mkdir -p "$PEERS_DIR"
if [[ ! -x "$BIN" ]]; then
    (cd "$REPO_ROOT" && cargo build --quiet --bin switchboard) </dev/null
fi

checkout() { # url dir rev
    if [[ ! -d "$2/.git" ]]; then
        git clone --quiet "$1" "$2"
    fi
    git -C "$2" -c advice.detachedHead=false checkout --quiet "$3"
}

# The broker on the ports the suites expect. Paho's test broker grants at most 60 s of keep
# alive (test_server_keep_alive), hence mqtt.max_keep_alive. Paho's v5 client takes no SUBACK
# failure code but 0x80 (test_subscribe_failure; RabbitMQ and Mosquitto answer 0x87 Not
# authorized, our default), hence mqtt.refusal_reason.
work="$(mktemp -d)"
cat >"$work/broker.toml" <<EOF
[server]
data_dir = "$work/data"
memory_high_watermark_bytes = 0
disk_free_limit_bytes = 0
[amqp]
listen = ["127.0.0.1:5672"]
[mqtt]
listen = ["127.0.0.1:1883"]
ws_listen = []
max_keep_alive = 60
refusal_reason = "unspecified"
[stomp]
listen = []
ws_listen = []
[http]
listen = ["127.0.0.1:15672"]
EOF
"$BIN" serve --config "$work/broker.toml" >"$work/broker.log" 2>&1 &
broker=$!
trap 'kill "$broker" 2>/dev/null; wait "$broker" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
    grep -q "Switchboard is running" "$work/broker.log" && break
    kill -0 "$broker" 2>/dev/null || { cat "$work/broker.log" >&2; exit 1; }
    sleep 0.1
done

# Paho's test_subscribe_failure needs its filter test/nosubscribe refused: a topic permission
# whose read pattern matches every routing key but test.nosubscribe (Rust's regex has no
# look-ahead, so "not this string" is spelled out: shorter, longer, or differing somewhere).
deny_exactly() {
    local s="$1" n=${#1} alts=".{0,$((${#1} - 1))}\$|.{$((${#1} + 1)),}" i
    for ((i = 0; i < n; i++)); do
        local rest=$((n - i - 1)) tail='$'
        ((rest > 0)) && tail=".{$rest}\$"
        alts+="|$(sed 's/\./\\./g' <<<"${s:0:i}")[^${s:i:1}]$tail"
    done
    printf '(?s)^(?:%s)' "$alts"
}
"$BIN" ctl set_topic_permissions -p / guest amq.topic '.*' "$(deny_exactly test.nosubscribe)" >/dev/null

status=0
for suite in "${SUITES[@]}"; do
    case "$suite" in
        paho)
            checkout "$PAHO_GIT" "$PEERS_DIR/paho" "$PAHO_COMMIT"
            (cd "$PEERS_DIR/paho/interoperability" && python3 client_test.py </dev/null) || status=1
            (cd "$PEERS_DIR/paho/interoperability" &&
                python3 client_test5.py -p 1883 </dev/null) || status=1
            ;;
        pika)
            checkout "$PIKA_GIT" "$PEERS_DIR/pika" "$PIKA_TAG"
            venv="$PEERS_DIR/venv"
            [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
            "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
                pytest pytest-timeout gevent tornado twisted </dev/null
            # TestGetaddrinfoWWWGoogleDotComPort80 resolves www.google.com and never reaches
            # the broker: without name resolution for it (no network) it can only fail, so
            # it is left out, and said so, rather than counted against the broker.
            deselect=()
            if ! python3 -c 'import socket; socket.getaddrinfo("www.google.com", 80)' 2>/dev/null; then
                echo "peers.sh: www.google.com does not resolve here; deselecting pika's" \
                    "TestGetaddrinfoWWWGoogleDotComPort80 (3 tests, no broker involved)" >&2
                deselect=(--deselect
                    tests/acceptance/io_services_tests.py::TestGetaddrinfoWWWGoogleDotComPort80)
            fi
            (cd "$PEERS_DIR/pika" &&
                "$venv/bin/python" -m pytest tests/acceptance -q -p no:cacheprovider \
                    --timeout=120 "${deselect[@]}" </dev/null) || status=1
            ;;
        *) echo "peers.sh: unknown suite '$suite' (paho, pika)" >&2; exit 2 ;;
    esac
done
exit "$status"
