"""The web dashboard in a real headless browser, against a broker with traffic on AMQP, MQTT
and STOMP at once: log in, see the overview numbers move, sort and filter the queue table,
open a queue page and use it."""
import json
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pika
import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from conftest import _parse_addr
from stomp_helpers import open_stomp

WAIT = 20


def waiter(driver):
    """A wait that retries past elements the page re-rendered meanwhile (it polls the API)."""
    return WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,))


@pytest.fixture(scope="module")
def http_url(broker):
    addrs = broker.extra.get("http") or []
    if not addrs:
        pytest.skip("the broker has no HTTP listener")
    host, port = _parse_addr(addrs[0])
    return f"http://{host}:{port}"


class Traffic:
    """Publishers on all three protocols, each to its own queue, until stopped."""

    def __init__(self, broker, mqtt_addr, stomp_addr, tag):
        self.stop = threading.Event()
        self.queues = [f"dash-amqp-{tag}", f"dash-stomp-{tag}"]
        self.errors = []
        self.threads = [
            threading.Thread(target=self._guard, args=(self._amqp, broker), daemon=True),
            threading.Thread(target=self._guard, args=(self._stomp, stomp_addr), daemon=True),
            threading.Thread(target=self._guard, args=(self._mqtt, mqtt_addr, tag), daemon=True),
        ]

    def _guard(self, f, *args):
        try:
            f(*args)
        except Exception as e:  # reported by the test, not lost in a thread
            self.errors.append(repr(e))

    def _amqp(self, broker):
        conn = pika.BlockingConnection(broker.params())
        ch = conn.channel()
        ch.queue_declare(self.queues[0])
        while not self.stop.is_set():
            ch.basic_publish("", self.queues[0], b"from amqp")
            conn.sleep(0.01)
        conn.close()

    def _stomp(self, stomp_addr):
        conn, _ = open_stomp(stomp_addr)
        while not self.stop.is_set():
            conn.send(f"/queue/{self.queues[1]}", "from stomp")
            time.sleep(0.01)
        conn.disconnect()

    def _mqtt(self, mqtt_addr, tag):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dash-{tag}")
        c.connect(*mqtt_addr)
        c.loop_start()
        c.subscribe(f"dash/{tag}", qos=1)
        while not self.stop.is_set():
            c.publish(f"dash/{tag}", b"from mqtt", qos=1)
            time.sleep(0.01)
        c.loop_stop()
        c.disconnect()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


def click(driver, locator):
    """Clicks what `locator` finds, again if the page re-rendered it under the click."""
    waiter(driver).until(lambda d: d.find_element(*locator).click() or True)


def login(driver, http_url):
    driver.get(http_url + "/")
    wait = waiter(driver)
    wait.until(EC.visibility_of_element_located((By.ID, "login-user"))).send_keys("guest")
    driver.find_element(By.ID, "login-password").send_keys("guest")
    driver.find_element(By.ID, "login-submit").click()
    wait.until(EC.visibility_of_element_located((By.ID, "total-published")))


def number(driver, card_id):
    text = driver.find_element(By.CSS_SELECTOR, f"#{card_id} .n").text
    return int(text.replace(",", "") or 0)


def test_root_needs_no_credentials_and_shows_a_login_form(driver, http_url):
    driver.get(http_url + "/")
    form = waiter(driver).until(
        EC.visibility_of_element_located((By.ID, "login")))
    assert form.find_element(By.ID, "login-password").get_attribute("type") == "password"
    driver.find_element(By.ID, "login-user").send_keys("guest")
    driver.find_element(By.ID, "login-password").send_keys("wrong")
    driver.find_element(By.ID, "login-submit").click()
    waiter(driver).until(
        EC.text_to_be_present_in_element((By.ID, "login-error"), "Login failed"))


def test_overview_moves_and_queue_pages_work_with_traffic_on_three_protocols(
        driver, http_url, broker, mqtt_addr, stomp_addr):
    tag = uuid.uuid4().hex[:8]
    with Traffic(broker, mqtt_addr, stomp_addr, tag) as traffic:
        login(driver, http_url)
        wait = waiter(driver)
        first = number(driver, "total-published")
        wait.until(lambda d: number(d, "total-published") > first)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#rate-publish .n").text != "0/s")

        # Connections of all three protocols, the MQTT one with its client id.
        driver.get(http_url + "/#/connections")
        wait.until(lambda d: all(
            p in d.find_element(By.ID, "connections-table").text for p in ("amqp", "mqtt", "stomp")))
        assert f"dash-{tag}" in driver.find_element(By.ID, "connections-table").text

        driver.get(http_url + "/#/mqtt")
        wait.until(lambda d: f"dash-{tag}" in d.find_element(By.ID, "mqtt-table").text)

        # The queue table: filter to this test's queues, sort by name both ways.
        driver.get(http_url + "/#/queues")
        table = wait.until(EC.presence_of_element_located((By.ID, "queues-table")))
        wait.until(lambda d: traffic.queues[1] in d.find_element(By.ID, "queues-table").text)
        table.find_element(By.CSS_SELECTOR, "input.filter").send_keys(f"dash-.*-{tag}")

        def names(d):
            rows = d.find_elements(By.CSS_SELECTOR, "#queues-table tbody tr")
            return [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows]

        wait.until(lambda d: sorted(names(d)) == sorted(traffic.queues))
        name_header = (By.CSS_SELECTOR, "#queues-table th[data-key='name']")
        click(driver, name_header)
        wait.until(lambda d: names(d) == sorted(traffic.queues))
        click(driver, name_header)
        wait.until(lambda d: names(d) == sorted(traffic.queues, reverse=True))

        # A queue page: its numbers and bindings.
        click(driver, (By.LINK_TEXT, traffic.queues[0]))
        wait.until(EC.presence_of_element_located((By.ID, "publish-form")))
        wait.until(lambda d: "ready" in d.find_element(By.ID, "queue-info").text)
        wait.until(lambda d: traffic.queues[0] in d.find_element(By.ID, "queue-bindings").text)
    assert not traffic.errors, traffic.errors


def _has_endpoint(http_url, method, path, body):
    """Whether the broker serves a management endpoint (404/405: it has no such route)."""
    import base64
    import urllib.error
    import urllib.request
    req = urllib.request.Request(http_url + path, method=method,
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
    try:
        urllib.request.urlopen(req, timeout=10).read()
        return True
    except urllib.error.HTTPError as e:
        return e.code not in (404, 405)


def test_queue_page_publishes_gets_and_purges(driver, http_url, connect):
    queue = f"dash-page-{uuid.uuid4().hex[:8]}"
    connect().channel().queue_declare(queue)
    publish = "/api/exchanges/%2F/amq.default/publish"
    if not _has_endpoint(http_url, "POST", publish,
                         {"properties": {}, "routing_key": queue, "payload": "probe",
                          "payload_encoding": "string"}):
        pytest.skip(f"the broker has no POST {publish} (RabbitMQ's publish endpoint)")
    login(driver, http_url)
    wait = waiter(driver)
    driver.get(f"{http_url}/#/queue/%2F/{queue}")
    wait.until(EC.presence_of_element_located((By.ID, "publish-form")))
    driver.execute_script("window.confirm = () => true;")
    driver.find_element(By.ID, "purge").click()
    wait.until(lambda d: "purged" in d.find_element(By.ID, "queue-result").text)
    payload = f"hello from the dashboard {queue}"
    driver.find_element(By.ID, "publish-payload").send_keys(payload)
    driver.find_element(By.CSS_SELECTOR, "#publish-form button").click()
    wait.until(lambda d: "published" in d.find_element(By.ID, "queue-result").text)
    driver.find_element(By.CSS_SELECTOR, "#get-form button").click()
    wait.until(lambda d: payload in d.find_element(By.ID, "queue-result").text)
    driver.find_element(By.ID, "delete").click()
    wait.until(lambda d: d.current_url.endswith("#/queues"))


def test_admin_pages_list_users_vhosts_and_permissions(driver, http_url):
    login(driver, http_url)
    driver.get(http_url + "/#/admin")
    wait = waiter(driver)
    wait.until(lambda d: "guest" in d.find_element(By.ID, "users-table").text)
    assert "/" in driver.find_element(By.ID, "vhosts-table").text
    assert ".*" in driver.find_element(By.ID, "permissions-table").text
