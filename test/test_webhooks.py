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
                                 "http://h:99999/x", "http://h/" + "a" * 3000, "javascript:alert(1)"])
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
    store.enqueue("job-d", "model.failed", {"error": "Zoë Ünïcode"})
    assert store.scrub("Zoë Ünïcode") == 1 and [r["job_id"] for r in store.due(time.time())] == ["job-c"]
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
