"""Callbacks, unit by unit (app/broker/webhooks.py): the Standard Webhooks signature, who may be called, the durable
queue and the sender's retries over a real local HTTP receiver."""
from __future__ import annotations

import ipaddress
import itertools
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.broker.webhooks import (
    DELIVERED,
    FAILED,
    PENDING,
    Sender,
    WebhookStore,
    db_path,
)
from app.shared.callbacks import AllowList, CallbackRefused, check_url, new_secret, sign, split_url
from constants import Settings, SettingsError, webhook_allow_entries
from test.test_callbacks import Receiver, verify_signature
from test.waits import wait_until


def test_the_signature_is_standard_webhooks():
    """The reference libraries' test vector (standard-webhooks / svix)."""
    assert sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                b'{"test": 2432232314}') == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_secrets_are_new_and_well_formed():
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("whsec_") and len(a) == len("whsec_") + 44


def fixed(*addresses: str):
    return lambda host, port: [ipaddress.ip_address(a) for a in addresses]


def test_only_listed_hosts_at_public_addresses_or_listed_ones():
    allow = AllowList.parse("hooks.example.com, *.corp.example 127.0.0.1 10.20.0.0/16")
    assert check_url("https://hooks.example.com/x", allow, fixed("93.184.216.34"))
    assert check_url("http://a.b.corp.example:8080/x", allow, fixed("93.184.216.34"))
    assert check_url("http://127.0.0.1:9/x", allow)
    assert check_url("http://hooks.example.com/x", allow, fixed("10.20.3.4"))  # private, but its network is listed
    refused = [
        ("http://evil.example.org/x", fixed("93.184.216.34")),  # not listed
        ("http://corp.example/x", fixed("93.184.216.34")),  # *.corp.example is below it, not it
        ("http://hooks.example.com/x", fixed("10.0.0.1")),  # listed name, unlisted private address
        ("http://hooks.example.com/x", fixed("93.184.216.34", "127.0.0.2")),  # every address is checked
        ("http://hooks.example.com/x", fixed("::ffff:192.168.1.1")),  # a private v4 address in v6 clothes
        ("http://hooks.example.com/x", fixed("169.254.169.254")),
        ("http://hooks.example.com/x", fixed("fe80::1")),
        ("http://hooks.example.com/x", fixed("224.0.0.1")),
        ("http://hooks.example.com/x", fixed()),
    ]
    for url, resolver in refused:
        with pytest.raises(CallbackRefused) as exc:
            check_url(url, allow, resolver)
        assert exc.value.code == "CALLBACK_NOT_ALLOWED", url
    assert check_url("http://10.20.3.4/x", allow)  # listed by network
    with pytest.raises(CallbackRefused):
        check_url("http://127.0.0.1/x", AllowList.parse(""))  # nothing listed: no callbacks at all


@pytest.mark.parametrize("url", ["ftp://h/x", "http://u:p@h/x", "http:///x", "h/x", "", "http://h/a b",
                                 "http://h:99999/x", "http://h/" + "a" * 3000, "javascript:alert(1)",
                                 "http://h:0/x", "https://h:00/x"])  # port 0 once became 80/443 unsaid
def test_malformed_urls(url):
    with pytest.raises(CallbackRefused) as exc:
        split_url(url)
    assert exc.value.code == "BAD_CALLBACK_URL"


@given(st.text(max_size=60))
def test_any_allow_list_entry_is_parsed_or_refused_loudly(raw):
    try:
        entries = webhook_allow_entries(raw)
    except SettingsError as exc:
        assert "FR_WEBHOOK_ALLOW" in str(exc)
        return
    AllowList.parse(",".join(entries))


def test_a_bad_allow_list_stops_the_start():
    with pytest.raises(SettingsError, match="FR_WEBHOOK_ALLOW"):
        Settings.from_env({"FR_WEBHOOK_ALLOW": "http://x.example/"})
    with pytest.raises(SettingsError, match="FR_WEBHOOK_RETRY_FOR_S"):
        Settings.from_env({"FR_WEBHOOK_RETRY_FOR_S": "60"})  # at least 10 minutes of retries


# --- the queue and the sender ------------------------------------------------------------------------
@pytest.fixture
def settings(tmp_path):
    return Settings.from_env({"FR_WEBHOOK_ALLOW": "127.0.0.1", "FR_WEBHOOK_RETRY_S": "0.2"}, data_dir=tmp_path)


def test_a_message_is_queued_once_and_only_with_a_subscription(settings):
    store = WebhookStore(db_path(settings))
    assert store.enqueue("job-a", "model.done", {"id": "job-a"}) is None
    store.subscribe("job-a", {"url": "http://127.0.0.1:9/x", "secret": new_secret()})
    assert store.enqueue("job-a", "model.done", {"id": "job-a"}).startswith("msg_")
    assert store.enqueue("job-a", "model.done", {"id": "job-a"}) is None  # a job ends once
    assert len(store.due(time.time())) == 1
    store.subscribe("job-b", {"url": "http://127.0.0.1:9/x", "secret": new_secret()})
    store.move("job-b", "job-c")
    assert store.enqueue("job-b", "model.done", {}) is None and store.enqueue("job-c", "model.done", {})
    store.forget("job-a")
    assert [r["job_id"] for r in store.due(time.time())] == ["job-c"]
    store.subscribe("job-d", {"url": "http://127.0.0.1:9/x", "secret": new_secret()})
    store.enqueue("job-d", "model.failed", {"error": "Zoë Ünïcode"}, "acme")
    assert store.forget_jobs(["job-d", "job-x"]) == 1 and [r["job_id"] for r in store.due(time.time())] == ["job-c"]
    store.close()


def test_the_sender_retries_with_backoff_and_a_new_sender_finishes_the_job(settings):
    from logger import logger
    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), format="{message}")
    receiver = Receiver()
    try:
        receiver.script["/hook"] = [500]
        store = WebhookStore(db_path(settings))
        secret = new_secret()
        store.subscribe("job-1", {"url": receiver.url("/hook"), "secret": secret})
        msg = store.enqueue("job-1", "model.done", {"id": "job-1"})
        sender = Sender(settings)
        sender.start()
        receiver.wait("/hook", 3, timeout=20)
        sender.stop()  # as a broker that stops: the message stays queued
        row = store.db.execute("SELECT * FROM deliveries WHERE id = ?", (msg,)).fetchone()
        assert row["state"] == PENDING and row["attempts"] >= 3 and row["last_status"] == 500
        calls = receiver.at("/hook")
        # the delay doubles: as the sender scheduled it (its log line for each failure), not as this machine's
        # load let the calls arrive; and no call came before its time (a lower bound, true however slow)
        scheduled = [m.group(1, 2) for line in said if (m := re.search(r"failed \(HTTP 500\); attempt (\d+) in "
                                                                         r"([\d.]+) s", line))]
        assert scheduled[:2] == [("2", "0.2"), ("3", "0.4")], scheduled
        gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(calls)]
        assert gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps
        receiver.script["/hook"] = [200]
        again = Sender(settings)
        again.start()
        receiver.wait("/hook", len(calls) + 1, timeout=20)
        wait_until(lambda: store.db.execute("SELECT state FROM deliveries WHERE id = ?", (msg,)).fetchone()[0]
                   == DELIVERED, 30, interval=0.05)
        again.stop()
        for call in receiver.at("/hook"):
            assert verify_signature(call, secret)["data"] == {"id": "job-1"}
            assert call["headers"]["webhook-id"] == msg
        store.close()
    finally:
        receiver.close()
        logger.remove(sink)


def test_the_sender_gives_up_after_the_retry_window(settings, monkeypatch):
    store = WebhookStore(db_path(settings))
    store.subscribe("job-1", {"url": "http://127.0.0.1:9/x", "secret": new_secret()})
    msg = store.enqueue("job-1", "model.done", {})
    store.db.execute("UPDATE deliveries SET created = ?", (time.time() - settings.webhook_retry_for_s - 1,))
    Sender(settings, post_fn=lambda *a: 503).deliver(store, store.due(time.time())[0])
    row = store.db.execute("SELECT * FROM deliveries WHERE id = ?", (msg,)).fetchone()
    assert row["state"] == FAILED and row["last_error"] == "HTTP 503"
    store.close()


def test_the_sender_checks_the_allow_list_again_at_every_attempt(settings):
    """A host allowed when the build was submitted but not any more (the operator changed the list) is not
    called: the attempt fails and is retried later."""
    store = WebhookStore(db_path(settings))
    store.subscribe("job-1", {"url": "http://127.0.0.1:9/x", "secret": new_secret()})
    store.enqueue("job-1", "model.done", {})
    called = []
    strict = Settings.from_env({"FR_WEBHOOK_ALLOW": "hooks.example.com"}, data_dir=settings.data_dir)
    Sender(strict, post_fn=lambda *a: called.append(a) or 200).deliver(store, store.due(time.time())[0])
    row = store.db.execute("SELECT * FROM deliveries").fetchone()
    assert called == [] and row["state"] == PENDING and "not allowed" in row["last_error"]
    store.close()


# --- issue #26: callbacks that no tenant can stop for another -------------------------------------------------
class Dripper:
    """A receiver that reads the request, answers a status line and headers promising 1000 bytes, then drips one
    byte every 0.2 s until `release()` (each read is quick: only a total deadline ends the attempt)."""

    def __init__(self):
        import socket
        import threading
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.released = threading.Event()
        self.connected = threading.Event()
        self.closed = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self) -> None:
        while not self.released.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connected.set()
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                while not self.released.wait(0.2):
                    conn.sendall(b"x")
            except OSError:
                pass
            finally:
                self.closed.set()
                conn.close()

    def release(self) -> None:
        self.released.set()
        self.server.close()


def test_a_callback_url_is_normalised_at_submit():
    """IDNA host, percent-encoded path and query (UTF-8), fragment dropped, escapes kept: all ASCII."""
    from app.shared.callbacks import callback_for, normalise_url
    s = Settings.from_env({"FR_WEBHOOK_ALLOW": "127.0.0.1"})
    assert callback_for("http://127.0.0.1:9/café?q=é#frag", s)["url"] == "http://127.0.0.1:9/caf%C3%A9?q=%C3%A9"
    assert normalise_url("HTTPS://Café.Example:443/a%2Fb/ü") == "https://xn--caf-dma.example/a%2Fb/%C3%BC"
    assert normalise_url("http://[::1]:8080/x") == "http://[::1]:8080/x"
    assert AllowList.parse("xn--caf-dma.example").host_allowed(split_url("http://CAFÉ.example/")[1])
    for bad in ("http://a\u0085b/x", "http://\u2488.example/x" + "\udc80", "http://xn--a.example\ufffd/"):
        with pytest.raises(CallbackRefused):
            normalise_url(bad)


@given(st.text(max_size=40), st.text(max_size=10))
def test_any_callback_url_is_refused_or_sendable(path, host):
    """Whatever a client writes, the URL is refused at submit or is one http.client can send (ASCII)."""
    from app.shared.callbacks import normalise_url
    try:
        url = normalise_url(f"http://{host or 'h'}.example/{path}")
    except CallbackRefused as exc:
        assert exc.code == "BAD_CALLBACK_URL"
        return
    assert url.isascii() and normalise_url(url) == url
    _, h, _, p = split_url(url)
    (h + p).encode("ascii")


def test_the_sender_survives_any_exception_of_one_delivery(settings):
    """A URL stored raw by an older front (a non-ASCII path: http.client raised UnicodeEncodeError and the only
    sender thread died) and a post that raises anything: each is that message's failed attempt, logged; the
    other messages are delivered and the sender goes on."""
    from logger import logger
    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), format="{message}")
    receiver = Receiver()
    store = WebhookStore(db_path(settings))
    try:
        store.subscribe("raw", {"url": receiver.url("/café"), "secret": new_secret()})
        store.enqueue("raw", "model.done", {}, "acme")
        sender = Sender(settings)
        sender.start()
        receiver.wait("/caf%C3%A9", 1, timeout=30)  # normalised by the sender too
        boom = Sender(settings, post_fn=lambda url, *a: (_ for _ in ()).throw(
            UnicodeEncodeError("ascii", "é", 0, 1, "bad") if "boom" in url else RuntimeError("odd")))
        store.subscribe("boom", {"url": receiver.url("/boom"), "secret": new_secret()})
        store.enqueue("boom", "model.done", {}, "acme")
        store.subscribe("odd", {"url": receiver.url("/odd"), "secret": new_secret()})
        store.enqueue("odd", "model.done", {}, "globex")
        sender.stop()
        boom.start()
        errors = lambda: {r["job_id"]: r["last_error"] for r in store.db.execute(  # noqa: E731
            "SELECT * FROM deliveries WHERE attempts > 0 AND state = 'pending'")}
        wait_until(lambda: {"boom", "odd"} <= set(errors()), 30)
        assert errors()["boom"].startswith("UnicodeEncodeError") and errors()["odd"] == "RuntimeError: odd"
        assert boom.is_alive() and boom.health() == {"ok": True}
        assert any("unexpected failure of an attempt" in line for line in said)
        boom.stop()
    finally:
        store.close()
        receiver.close()
        logger.remove(sink)


def test_one_attempt_has_one_deadline_whatever_the_receiver_drips():
    """A byte every 0.2 s never trips a per-read timeout of 1 s: the attempt must still end at its deadline."""
    import threading

    from app.broker.webhooks import post
    dripper = Dripper()
    outcome: list = []

    def attempt():
        try:
            outcome.append(post(dripper.url("/x"), [ipaddress.ip_address("127.0.0.1")], b"{}", {}, 1.0))
        except Exception as exc:
            outcome.append(exc)
    threading.Thread(target=attempt, daemon=True).start()
    try:
        wait_until(lambda: outcome, 30, what="the attempt to end")
        assert isinstance(outcome[0], TimeoutError), outcome
        assert not dripper.released.is_set()  # the receiver was still dripping: the deadline ended it
    finally:
        dripper.release()


def test_a_slow_receiver_delays_only_its_own_tenant(tmp_path):
    """Tenant a's receiver holds its connection (dripping): tenant b's message is delivered meanwhile, and a's
    next message waits for a's first (at most one delivery in flight per tenant)."""
    s = Settings.from_env({"FR_WEBHOOK_ALLOW": "127.0.0.1", "FR_WEBHOOK_TIMEOUT_S": "120"}, data_dir=tmp_path)
    dripper, receiver = Dripper(), Receiver()
    store = WebhookStore(db_path(s))
    sender = Sender(s)
    try:
        for job, url, tenant in (("a1", dripper.url("/slow"), "a"), ("b1", receiver.url("/b"), "b"),
                                 ("a2", receiver.url("/a2"), "a")):
            store.subscribe(job, {"url": url, "secret": new_secret()})
            store.enqueue(job, "model.done", {}, tenant)
        sender.start()
        receiver.wait("/b", 1, timeout=30)
        assert dripper.connected.is_set() and not dripper.closed.is_set()  # a1 still in flight
        states = lambda: {r["job_id"]: (r["state"], r["attempts"]) for r in store.db.execute(  # noqa: E731
            "SELECT * FROM deliveries")}
        wait_until(lambda: states()["b1"] == (DELIVERED, 1), 30)
        assert states()["a1"] == (PENDING, 0) and states()["a2"] == (PENDING, 0) and receiver.at("/a2") == []
        dripper.release()  # a1 ends (a short answer: a failed attempt), then a2 goes
        receiver.wait("/a2", 1, timeout=30)
    finally:
        sender.stop()
        dripper.release()
        receiver.close()
        store.close()


class Halt(BaseException):
    """Ends a thread the way nothing in the sender catches."""


def test_is_alive_learns_of_a_dead_or_stuck_sender(settings, monkeypatch):
    import threading

    import app.broker.webhooks as webhooks
    store = WebhookStore(db_path(settings))
    store.subscribe("job-1", {"url": "http://127.0.0.1:9/x", "secret": new_secret()})
    store.enqueue("job-1", "model.done", {}, "acme")
    hold = threading.Event()
    stuck = Sender(settings, post_fn=lambda *a: hold.wait(60) and 200)
    monkeypatch.setattr(webhooks, "LATE_AFTER_S", 0.0)
    stuck.start()
    try:
        report = wait_until(lambda: (h := stuck.health())["ok"] is False and h, 30)
        assert "past its" in report["message"]
    finally:
        hold.set()
        stuck.stop()
    dead = Sender(settings)
    monkeypatch.setattr(dead, "dispatch", lambda rows: (_ for _ in ()).throw(Halt()))
    monkeypatch.setattr(threading, "excepthook", lambda args: None)
    dead.start()
    dead.join(10)
    assert dead.health() == {"ok": False, "message": "the callbacks' sender thread has stopped"}
    store.close()


def test_one_tenants_backlog_never_hides_anothers_message(settings):
    """The sender takes the first due message of each tenant: 300 of acme's before globex's one still leave
    globex's among those handed out."""
    store = WebhookStore(db_path(settings))
    for i in range(300):
        store.subscribe(f"a{i}", {"url": "http://127.0.0.1:9/x", "secret": new_secret()})
        store.enqueue(f"a{i}", "model.done", {}, "acme")
    store.subscribe("g", {"url": "http://127.0.0.1:9/x", "secret": new_secret()})
    store.enqueue("g", "model.done", {}, "globex")
    heads = store.heads(time.time())
    assert sorted(r["tenant"] for r in heads) == ["acme", "globex"]
    assert {r["tenant"]: r["job_id"] for r in heads}["globex"] == "g"
    store.close()
