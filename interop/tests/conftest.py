"""Fixtures for the pika interop suite.

The session-scoped ``broker`` fixture either starts a Switchboard broker on
OS-chosen ports (config, data dir and ports file in a temp dir) or, when
``INTEROP_AMQP_PORT`` is set, points at an already running broker on
127.0.0.1 (e.g. a real RabbitMQ, to check that the tests encode its
behaviour).
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pika
import pytest

import browser
import pki

REPO_ROOT = Path(__file__).resolve().parents[2]

STARTUP_TIMEOUT = float(os.environ.get("INTEROP_STARTUP_TIMEOUT", "30"))
SHUTDOWN_TIMEOUT = 10.0

CONFIG_TEMPLATE = """\
[server]
data_dir = "{data_dir}"

[amqp]
listen = ["127.0.0.1:0"]
tls_listen = ["127.0.0.1:0"]

[mqtt]
listen = ["127.0.0.1:0"]
tls_listen = ["127.0.0.1:0"]
ws_listen = ["127.0.0.1:0"]
wss_listen = ["127.0.0.1:0"]

[stomp]
listen = ["127.0.0.1:0"]
tls_listen = ["127.0.0.1:0"]
ws_listen = ["127.0.0.1:0"]
wss_listen = ["127.0.0.1:0"]
default_login = "guest"
default_passcode = "guest"
heartbeat_ms = 200

[http]
listen = ["127.0.0.1:0"]
stats_interval_ms = 500

[prometheus]
listen = ["127.0.0.1:0"]

# Client certificates are verified when sent, not required.
[tls]
cert_file = "{server_cert}"
key_file = "{server_key}"
ca_file = "{ca}"
verify_peer = true
fail_if_no_peer_cert = false

[[users]]
name = "guest"
password = "guest"
tags = ["administrator"]

[[vhosts]]
name = "/"
"""


_SUMMARY = []


def pytest_terminal_summary(terminalreporter):
    for line in _SUMMARY:
        terminalreporter.write_line(line)


@dataclass
class Broker:
    host: str
    port: int
    proc: Optional[subprocess.Popen] = None
    workdir: Optional[Path] = None
    stderr_path: Optional[Path] = None
    extra: dict = field(default_factory=dict)

    def log_tail(self, limit: int = 6000) -> str:
        if self.stderr_path is None or not self.stderr_path.exists():
            return "(no broker log)"
        text = self.stderr_path.read_text(errors="replace")
        return text[-limit:] if text else "(broker log is empty)"

    def params(self, **overrides) -> pika.ConnectionParameters:
        kwargs = dict(
            host=self.host,
            port=self.port,
            virtual_host="/",
            credentials=pika.PlainCredentials("guest", "guest"),
            connection_attempts=1,
            socket_timeout=5,
            stack_timeout=15,
            blocked_connection_timeout=30,
        )
        kwargs.update(overrides)
        return pika.ConnectionParameters(**kwargs)


def _find_binary() -> Path:
    env = os.environ.get("SWITCHBOARD_BIN")
    if env:
        path = Path(env)
    else:
        target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
        if not target.is_absolute():
            target = REPO_ROOT / target
        path = target / "debug" / "switchboard"
    if not path.is_file():
        raise RuntimeError(
            f"switchboard binary not found at {path}; run interop/run.sh "
            "(which builds it), set SWITCHBOARD_BIN, or set INTEROP_AMQP_PORT "
            "to test an already running broker")
    return path


def _broker_env() -> dict:
    # SWITCHBOARD_BIN is the harness's own setting, not the broker's.
    env = dict(os.environ)
    env.pop("SWITCHBOARD_BIN", None)
    return env


def _parse_addr(addr: str):
    host, _, port = addr.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return host, int(port)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=SHUTDOWN_TIMEOUT)


def _start_switchboard() -> Broker:
    binary = _find_binary()
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-interop-"))
    try:
        return _launch(binary, workdir)
    except BaseException:
        if not os.environ.get("INTEROP_KEEP_TMP"):
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _launch(binary: Path, workdir: Path) -> Broker:
    data_dir = workdir / "data"
    data_dir.mkdir()
    config = workdir / "switchboard.toml"
    certificates = pki.make(workdir / "pki")
    config.write_text(CONFIG_TEMPLATE.format(data_dir=data_dir, **certificates))
    ports_file = workdir / "ports.json"
    stderr_path = workdir / "broker.log"
    with open(stderr_path, "wb") as log:
        proc = subprocess.Popen(
            [str(binary), "serve", "--config", str(config),
             "--ports-file", str(ports_file), "--log-level", "info"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=str(workdir), env=_broker_env())
    broker = Broker(host="127.0.0.1", port=0, proc=proc, workdir=workdir,
                    stderr_path=stderr_path)
    try:
        ports = _wait_for_ports_file(proc, ports_file, broker)
        amqp = ports.get("amqp") or []
        if not amqp:
            raise RuntimeError(f"ports file has no amqp listener: {ports!r}")
        broker.host, broker.port = _parse_addr(amqp[0])
        broker.extra = dict(ports, pki=certificates)
    except BaseException:
        _stop(proc)
        raise
    return broker


def _wait_for_ports_file(proc, ports_file: Path, broker: Broker) -> dict:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"switchboard exited with status {proc.returncode} before "
                f"writing {ports_file}:\n{broker.log_tail()}")
        if ports_file.exists():
            try:
                return json.loads(ports_file.read_text())
            except (OSError, ValueError):
                pass  # not complete yet; the broker renames it into place
        time.sleep(0.05)
    raise RuntimeError(
        f"switchboard did not write {ports_file} within "
        f"{STARTUP_TIMEOUT:.0f}s:\n{broker.log_tail()}")


@pytest.fixture(scope="session")
def broker():
    """The broker under test (a Broker with host/port/params())."""
    ext = os.environ.get("INTEROP_AMQP_PORT")
    if ext:
        yield Broker(host="127.0.0.1", port=int(ext))
        return
    b = _start_switchboard()
    try:
        yield b
    finally:
        crashed = b.proc.poll() is not None
        _stop(b.proc)
        if crashed or os.environ.get("INTEROP_KEEP_TMP"):
            _SUMMARY.append(f"switchboard work dir (config, data, broker.log) "
                            f"kept at {b.workdir}")
        else:
            shutil.rmtree(b.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def amqp_port(broker):
    return broker.port


@pytest.fixture(scope="session")
def stomp_addr(broker):
    """(host, port) of the broker's STOMP listener (INTEROP_STOMP_PORT for an external one)."""
    ext = os.environ.get("INTEROP_STOMP_PORT")
    if ext:
        return ("127.0.0.1", int(ext))
    addrs = broker.extra.get("stomp") or []
    if not addrs:
        pytest.skip("the broker has no STOMP listener")
    return _parse_addr(addrs[0])


@pytest.fixture
def stomp_connect(stomp_addr):
    """Factory for connected stomp.py clients (see stomp_helpers.open_stomp); all are
    disconnected after the test."""
    from stomp_helpers import open_stomp

    opened = []

    def _connect(**kwargs):
        conn, rec = open_stomp(stomp_addr, **kwargs)
        opened.append(conn)
        return conn, rec

    yield _connect
    for conn in opened:
        try:
            if conn.is_connected():
                conn.disconnect()
        except Exception:  # already broken: nothing left to close
            pass


@pytest.fixture(scope="session")
def mqtt_addr(broker):
    """(host, port) of the broker's MQTT listener (INTEROP_MQTT_PORT for an external one)."""
    ext = os.environ.get("INTEROP_MQTT_PORT")
    if ext:
        return ("127.0.0.1", int(ext))
    addrs = broker.extra.get("mqtt") or []
    if not addrs:
        pytest.skip("the broker has no MQTT listener")
    return _parse_addr(addrs[0])


@pytest.fixture(autouse=True)
def _broker_alive(request):
    """Fail loudly (with its log) if the broker process died during a test."""
    yield
    b = request.getfixturevalue("broker") if "broker" in request.fixturenames else None
    if b is not None and b.proc is not None and b.proc.poll() is not None:
        if b.extra.get("_crash_reported"):
            pytest.fail(f"switchboard is not running (exited with status "
                        f"{b.proc.returncode}, log shown earlier)", pytrace=False)
        b.extra["_crash_reported"] = True
        pytest.fail(f"switchboard exited with status {b.proc.returncode}:\n"
                    f"{b.log_tail()}", pytrace=False)


@pytest.fixture
def connect(broker):
    """Factory for extra BlockingConnections; all are closed after the test."""
    opened = []

    def _connect(**overrides) -> pika.BlockingConnection:
        conn = pika.BlockingConnection(broker.params(**overrides))
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        if conn.is_open:
            try:
                conn.close()
            except Exception:  # already broken: nothing left to close
                pass


@pytest.fixture
def connection(connect) -> pika.BlockingConnection:
    """A fresh BlockingConnection as guest, closed after the test."""
    return connect()


@pytest.fixture
def channel(connection):
    return connection.channel()


class Names:
    """Unique queue/exchange names for one test; best-effort cleanup after."""

    def __init__(self, test_name: str):
        self._tag = "".join(c if c.isalnum() else "_" for c in test_name)[:40]
        self.queues = []
        self.exchanges = []

    def _make(self, prefix: str) -> str:
        return f"{prefix}-{self._tag}-{uuid.uuid4().hex[:12]}"

    def queue(self, prefix: str = "q") -> str:
        name = self._make(prefix)
        self.queues.append(name)
        return name

    def exchange(self, prefix: str = "x") -> str:
        name = self._make(prefix)
        self.exchanges.append(name)
        return name


@pytest.fixture
def names(request, broker):
    n = Names(request.node.name)
    yield n
    if not (n.queues or n.exchanges):
        return
    # Cleanup matters for external brokers (durable queues survive there).
    try:
        conn = pika.BlockingConnection(broker.params())
    except Exception:
        return
    try:
        ch = None
        for kind, name in ([("q", q) for q in n.queues]
                           + [("x", x) for x in n.exchanges]):
            try:
                if ch is None or not ch.is_open:
                    ch = conn.channel()
                if kind == "q":
                    ch.queue_delete(queue=name)
                else:
                    ch.exchange_delete(exchange=name)
            except Exception:
                ch = None
                if not conn.is_open:
                    return
    finally:
        if conn.is_open:
            try:
                conn.close()
            except Exception:
                pass


@pytest.fixture
def driver():
    """A headless Chromium for the tests of pages (the dashboard, the WebSocket clients)."""
    if not browser.available():
        pytest.fail(f"chromium or chromedriver missing ({browser.CHROMIUM}, "
                    f"{browser.CHROMEDRIVER}); interop/run.sh installs them")
    d = browser.chromium()
    yield d
    d.quit()
