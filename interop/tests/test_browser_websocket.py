"""MQTT.js and stomp.js (@stomp/stompjs) in a real headless Chromium page, over the broker's
WebSocket listeners (ws://127.0.0.1:PORT/ws), where these clients live: the page's STOMP
client publishes to its MQTT client, pika publishes to its STOMP subscriber, and its MQTT
publish reaches a paho subscriber over TCP.

The libraries come from the npm registry (interop/run.sh installs pinned versions into
interop/.js and sets INTEROP_JS_DIR); a local HTTP server on an OS-chosen port serves them
with the page."""
import functools
import http.server
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
from selenium.webdriver.support.ui import WebDriverWait

from conftest import _parse_addr
from mqtt_helpers import Paho, unique

WAIT = 20

LIBRARIES = {
    "mqtt.min.js": "mqtt/dist/mqtt.min.js",
    "stomp.umd.min.js": "@stomp/stompjs/bundles/stomp.umd.min.js",
}

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>WebSocket clients</title>
<script src="mqtt.min.js"></script>
<script src="stomp.umd.min.js"></script>
</head><body>
<script>
const q = new URLSearchParams(location.search);
const tag = q.get("tag");
window.results = { log: [] };
const log = (m) => window.results.log.push(String(m));
const m = mqtt.connect(q.get("mqtt"), {
  username: "guest", password: "guest", protocolVersion: 4, reconnectPeriod: 0,
  clientId: "browser-" + tag,
});
m.on("error", (e) => log("mqtt error " + e));
m.on("message", (topic, payload) => { window.results.mqtt = topic + " " + payload.toString(); });
m.on("connect", () => m.subscribe("browser/" + tag + "/in", { qos: 1 }, (err) => {
  if (err) { log("mqtt subscribe " + err); return; }
  const s = new StompJs.Client({
    brokerURL: q.get("stomp"), reconnectDelay: 0,
    connectHeaders: { login: "guest", passcode: "guest", host: "/" },
  });
  s.onStompError = (f) => log("stomp error " + f.body);
  s.onWebSocketError = () => log("stomp websocket error");
  s.onConnect = () => {
    s.subscribe("/topic/browser." + tag + ".out", (msg) => { window.results.stomp = msg.body; },
                { receipt: "subscribed" });
    s.watchForReceipt("subscribed", () => {
      s.publish({ destination: "/topic/browser." + tag + ".in", body: "from stomp.js" });
      window.results.ready = true;
    });
  };
  s.activate();
  window.publishMqtt = (topic, body) => m.publish(topic, body, { qos: 1 });
}));
</script></body></html>
"""


@pytest.fixture(scope="module")
def site():
    js = os.environ.get("INTEROP_JS_DIR")
    if not js:
        pytest.fail("INTEROP_JS_DIR is not set: run interop/run.sh, which installs MQTT.js "
                    "and stomp.js from npm")
    root = Path(tempfile.mkdtemp(prefix="switchboard-browser-"))
    for name, path in LIBRARIES.items():
        shutil.copy(Path(js) / path, root / name)
    (root / "index.html").write_text(PAGE)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    shutil.rmtree(root, ignore_errors=True)


def ws_url(broker, key):
    addrs = broker.extra.get(key) or []
    if not addrs:
        pytest.skip(f"the broker has no {key} listener")
    host, port = _parse_addr(addrs[0])
    return f"ws://{host}:{port}/ws"


def result(driver, key):
    """Waits for the page's results[key]; fails with the page's log if it never comes."""
    try:
        return WebDriverWait(driver, WAIT).until(
            lambda d: d.execute_script(f"return window.results && window.results.{key}"))
    except Exception as e:
        log = driver.execute_script("return window.results && window.results.log")
        raise AssertionError(f"page never set {key}; its log: {log}") from e


def test_mqtt_js_and_stomp_js_in_chromium(broker, site, driver, connection, mqtt_addr):
    tag = unique("b").replace("-", "")
    driver.get(f"{site}/index.html?tag={tag}&mqtt={ws_url(broker, 'mqtt_ws')}"
               f"&stomp={ws_url(broker, 'stomp_ws')}")
    assert result(driver, "ready")
    # Browser STOMP over WebSocket -> browser MQTT over WebSocket.
    assert result(driver, "mqtt") == f"browser/{tag}/in from stomp.js"
    # AMQP -> browser STOMP.
    connection.channel().basic_publish("amq.topic", f"browser.{tag}.out", b"from pika")
    assert result(driver, "stomp") == "from pika"
    # Browser MQTT -> paho over TCP.
    sub = Paho(mqtt_addr)
    try:
        sub.subscribe(f"browser/{tag}/echo", qos=1)
        driver.execute_script(f"window.publishMqtt('browser/{tag}/echo', 'from mqtt.js')")
        assert sub.next_message().payload == b"from mqtt.js"
    finally:
        sub.close()
