#!/usr/bin/env bash
# Runs the pika interop suite against Switchboard (or an external broker).
#
#   interop/run.sh [extra pytest args...]
#
# Env:
#   INTEROP_AMQP_PORT  use an already running broker on 127.0.0.1:$PORT
#                      (nothing is built or started)
#   SWITCHBOARD_BIN    use this switchboard binary instead of building one
#   INTEROP_TIMEOUT    per-test timeout in seconds (default 60)
set -euo pipefail

INTEROP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$INTEROP_DIR/.." && pwd)"
VENV="$INTEROP_DIR/.venv"

# The dashboard's browser test (tests/test_dashboard.py) drives Debian's headless Chromium
# through chromedriver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            chromium chromium-driver; } </dev/null >/dev/null || {
            echo "run.sh: could not install chromium and chromium-driver with apt-get" >&2
            exit 1
        }
    else
        echo "run.sh: chromium and chromedriver are needed (Debian: apt-get install chromium chromium-driver)" >&2
        exit 1
    fi
fi

if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    python3 -m venv --clear "$VENV" || {
        echo "run.sh: 'python3 -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2
        exit 1
    }
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$INTEROP_DIR/requirements.txt" </dev/null

# The browser WebSocket test (tests/test_browser_websocket.py) loads MQTT.js and stomp.js from
# the npm registry, pinned, into a cache dir (never committed); Debian's nodejs brings npm.
JS_DIR="$INTEROP_DIR/.js"
JS_PACKAGES=(mqtt@5.16.0 @stomp/stompjs@7.5.0)
if [[ ! -f $JS_DIR/node_modules/mqtt/dist/mqtt.min.js \
    || ! -f $JS_DIR/node_modules/@stomp/stompjs/bundles/stomp.umd.min.js ]]; then
    if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; } \
            </dev/null >/dev/null || echo "run.sh: could not install npm with apt-get" >&2
    fi
    mkdir -p "$JS_DIR"
    npm install --silent --no-audit --no-fund --prefix "$JS_DIR" "${JS_PACKAGES[@]}" </dev/null || {
        echo "run.sh: npm install ${JS_PACKAGES[*]} failed" >&2
        exit 1
    }
fi
export INTEROP_JS_DIR="$JS_DIR/node_modules"

if [[ -z "${INTEROP_AMQP_PORT:-}" && -z "${SWITCHBOARD_BIN:-}" ]]; then
    (cd "$REPO_ROOT" && cargo build --quiet --bin switchboard) </dev/null
    SWITCHBOARD_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/switchboard"
    case "$SWITCHBOARD_BIN" in
        /*) ;;
        *) SWITCHBOARD_BIN="$REPO_ROOT/$SWITCHBOARD_BIN" ;;
    esac
    export SWITCHBOARD_BIN
fi

cd "$INTEROP_DIR"
if [[ $# -eq 0 ]]; then
    set -- "$INTEROP_DIR/tests"
fi
set +e
"$VENV/bin/python" -m pytest -q -c "$INTEROP_DIR/pytest.ini" \
    --timeout="${INTEROP_TIMEOUT:-60}" "$@" </dev/null
status=$?
set -e
exit "$status"
