"""Sinks against real receivers (Mosquitto on 127.0.0.1:1883, local HTTP servers) and the outbox sender."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from inspector.config.line import AppriseSinkConfig, MqttSinkConfig, WebhookSinkConfig
from inspector.errors import InspectorError
from inspector.io.outbox import Sender
from inspector.io.sinks import AppriseSink, MqttSink, SinkError, WebhookSink, build_sink, sign
from inspector.io.store import FlagRecord, ScoredFrame, Store
from tests.support import HookServer, MqttCollector, free_port, wait_for


@dataclass
class A:
    source: str
    payload: str
    idempotency_key: str


def alert(i: int, source: str = "cam") -> A:
    return A(source, json.dumps({"idempotency_key": f"k{i}", "source": source, "score": 1.5, "n": i}), f"k{i}")


def test_mqtt_publishes_qos1_to_topic_template():
    line = f"t{uuid.uuid4().hex[:8]}"
    col = MqttCollector(f"inspector/{line}/#")
    sink = MqttSink(MqttSinkConfig(kind="mqtt", name="m"), line)
    try:
        wait_for(lambda: sink._connected.is_set(), 10, what="sink connection")
        for i in range(3):
            sink.send(alert(i))
        wait_for(lambda: len(col.messages) == 3, 10, what="3 messages")
        assert [t for t, _ in col.messages] == [f"inspector/{line}/cam/alert"] * 3
        assert [p["n"] for _, p in col.messages] == [0, 1, 2]
    finally:
        sink.close()
        col.close()


def test_mqtt_without_broker_fails_the_attempt():
    sink = MqttSink(MqttSinkConfig(kind="mqtt", name="m", port=free_port()), "l")
    try:
        with pytest.raises(SinkError, match="not connected"):
            sink.send(alert(0))
    finally:
        sink.close()


def test_webhook_signs_the_body_and_retries_on_500(monkeypatch):
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    hook = HookServer()
    try:
        sink = build_sink(WebhookSinkConfig(kind="webhook", name="h", url=hook.url, secret_env="HOOK_SECRET"), "l")
        sink.send(alert(1))
        headers, body = hook.requests[0]
        expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert headers["X-Inspector-Signature"] == expected == sign("s3cret", body)
        assert headers["Idempotency-Key"] == "k1" and json.loads(body)["n"] == 1
        hook.status = 500
        with pytest.raises(SinkError, match="HTTP 500"):
            sink.send(alert(2))
    finally:
        hook.close()
    with pytest.raises(SinkError, match="POST failed"):
        WebhookSink(
            WebhookSinkConfig(kind="webhook", name="h", url=f"http://127.0.0.1:{free_port()}/x", timeout_s=2), "l"
        ).send(alert(3))


def test_missing_secret_env_is_a_config_error(monkeypatch):
    monkeypatch.delenv("NOPE_SECRET", raising=False)
    with pytest.raises(InspectorError, match="NOPE_SECRET is not set"):
        WebhookSink(WebhookSinkConfig(kind="webhook", name="h", url="http://x/", secret_env="NOPE_SECRET"), "l")


def test_apprise_delivers_through_its_json_plugin_and_reports_failure():
    hook = HookServer()
    try:
        port = hook.url.split(":")[2].split("/")[0]
        sink = AppriseSink(AppriseSinkConfig(kind="apprise", name="a", url=f"json://127.0.0.1:{port}/hook"), "line1")
        sink.send(alert(7, source="scan"))
        doc = json.loads(hook.requests[0][1])
        assert doc["title"] == "Defect on line1/scan" and "k7" in doc["message"]
        hook.status = 500
        with pytest.raises(SinkError):
            sink.send(alert(8))
    finally:
        hook.close()
    with pytest.raises(InspectorError, match="does not understand"):
        AppriseSink(AppriseSinkConfig(kind="apprise", name="a", url="nosuchscheme://x"), "l")


def alerts_of(tmp_path, sources: list[str]) -> tuple[Store, datetime]:
    """A SQLite store with one flagged frame and one pending alert (sink "h", payload n = i) per source listed."""
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    t0 = datetime.now(timezone.utc)
    for i, src in enumerate(sources):
        store.record_frame(
            ScoredFrame(src, f"k{i}", t0, 2.0, 4.0, 2.0, True),
            FlagRecord("v1", "i.png", "o.jpg", None, 8, 8, None, {"h": {"idempotency_key": f"k{i}", "n": i}}),
        )
    return store, t0


def webhook(hook: HookServer) -> WebhookSink:
    return WebhookSink(WebhookSinkConfig(kind="webhook", name="h", url=hook.url), "l")


def test_sender_retries_with_backoff_in_order_per_source(tmp_path):
    """Endpoint down: nothing is lost or reordered; delivery resumes when it answers again."""
    store, t0 = alerts_of(tmp_path, ["b", "a"] * 3)
    hook = HookServer()
    hook.status = 500
    sender = Sender(store, {"h": webhook(hook)}, 1.0, 8.0)
    try:
        sender.run_once("h", now=t0)
        heads = store.pending_heads("h")
        assert [h.idempotency_key for h in heads] == ["k0", "k1"]  # one attempt per source head, the rest waits
        assert all(h.attempts == 1 and h.next_attempt_at == t0 + timedelta(seconds=1) for h in heads)
        assert hook.attempts == 2
        sender.run_once("h", now=t0 + timedelta(seconds=0.5))  # not due yet: no attempt
        assert hook.attempts == 2
        sender.run_once("h", now=t0 + timedelta(seconds=1))
        assert [h.attempts for h in store.pending_heads("h")] == [2, 2]
        assert store.pending_heads("h")[0].next_attempt_at == t0 + timedelta(seconds=3)  # 1 s, then 2 s
        hook.status = 200
        sender.run_once("h", now=t0 + timedelta(seconds=3))
        assert store.pending_count() == {}
        got = [p["n"] for p in hook.payloads()]
        assert [n for n in got if n % 2] == [1, 3, 5] and [n for n in got if not n % 2] == [0, 2, 4]
    finally:
        hook.close()
        store.close()


def test_sender_of_one_line_delivers_only_its_sources(tmp_path, caplog):
    """Two lines on one store, sinks named alike: this watcher's sender leaves the other line's alerts."""
    store, _ = alerts_of(tmp_path, ["theirs", "mine"] * 2)
    hook = HookServer()
    sender = Sender(store, {"h": webhook(hook)}, 1.0, 8.0, sources=["mine"])
    try:
        with caplog.at_level("INFO", logger="inspector.watch.outbox"):
            sender.start()
            wait_for(lambda: len(hook.payloads()) == 2, 20, what="this line's alerts")
            sender.stop()
        assert sorted(p["n"] for p in hook.payloads()) == [1, 3]
        assert store.pending_count() == {"h": 2} and store.pending_by_source() == {"theirs": 2}
        assert "left to their own watchers" in caplog.text and "theirs 2" in caplog.text
    finally:
        hook.close()
        store.close()
