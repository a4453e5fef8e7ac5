"""Alert sinks: one small interface, `send()` returns only when the receiver acknowledged.

The outbox sender calls `send(alert)` for the oldest pending alert of a source; an exception means
"not delivered, retry later". Receivers deduplicate with the payload's `idempotency_key`, since an
alert whose acknowledgement was lost is sent again (at-least-once).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
from typing import Protocol

from inspector.config.line import AppriseSinkConfig, MqttSinkConfig, SinkConfig, WebhookSinkConfig
from inspector.errors import InspectorError

log = logging.getLogger("inspector.watch.sinks")


class SinkError(Exception):
    """This attempt failed; the alert stays in the outbox."""


class Alert(Protocol):
    source: str
    payload: str  # JSON text
    idempotency_key: str


class Sink(Protocol):
    name: str

    def send(self, alert: Alert) -> None: ...

    def close(self) -> None: ...


def expand_env(text: str, what: str) -> str:
    """Replace ${VAR} from the environment, so secrets stay out of the YAML file."""

    def sub(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise InspectorError(f"{what}: environment variable {m.group(1)} is not set")
        return os.environ[m.group(1)]

    return re.sub(r"\$\{(\w+)\}", sub, text)


def _secret(var: str | None, what: str) -> str | None:
    if var is None:
        return None
    if var not in os.environ:
        raise InspectorError(f"{what}: environment variable {var} is not set")
    return os.environ[var]


class MqttSink:
    """QoS 1 publish; delivered once the broker's PUBACK arrives. Reconnects in the background."""

    def __init__(self, cfg: MqttSinkConfig, line: str) -> None:
        import paho.mqtt.client as mqtt

        self.name, self.cfg, self.line = cfg.name, cfg, line
        self._connected = threading.Event()
        client_id = cfg.client_id or f"inspector-{line}-{cfg.name}-{os.getpid()}"
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if cfg.username:
            self._client.username_pw_set(cfg.username, _secret(cfg.password_env, f"sink {cfg.name}"))
        if cfg.tls:
            self._client.tls_set()
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.connect_async(cfg.host, cfg.port, keepalive=30)
        self._client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning(
                "sink %s: broker %s:%d refused the connection (%s)",
                self.name,
                self.cfg.host,
                self.cfg.port,
                reason_code,
            )
            return
        log.info("sink %s: connected to %s:%d", self.name, self.cfg.host, self.cfg.port)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set():
            log.warning("sink %s: disconnected from %s:%d (%s)", self.name, self.cfg.host, self.cfg.port, reason_code)
        self._connected.clear()

    def topic(self, source: str) -> str:
        return self.cfg.topic.format(line=self.line, source=source)

    def send(self, alert: Alert) -> None:
        if not self._connected.wait(timeout=0.5):
            raise SinkError(f"not connected to MQTT broker {self.cfg.host}:{self.cfg.port}")
        try:
            info = self._client.publish(self.topic(alert.source), alert.payload, qos=1)
            info.wait_for_publish(timeout=self.cfg.ack_timeout_s)
        except (RuntimeError, ValueError, OSError) as e:
            raise SinkError(f"publish failed ({e})") from None
        if not info.is_published():
            raise SinkError(f"no PUBACK from {self.cfg.host}:{self.cfg.port} within {self.cfg.ack_timeout_s:.0f} s")

    def close(self) -> None:
        self._connected.clear()  # a disconnect we asked for is not worth a warning
        self._client.disconnect()
        self._client.loop_stop()


def sign(secret: str, body: bytes) -> str:
    """Value of the X-Inspector-Signature header: receivers recompute it to trust the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSink:
    """HTTP POST of the JSON payload; any 2xx acknowledges it, anything else is retried."""

    def __init__(self, cfg: WebhookSinkConfig, line: str) -> None:
        import requests

        self.name, self.cfg = cfg.name, cfg
        self.url = expand_env(cfg.url, f"sink {cfg.name}")
        self.secret = _secret(cfg.secret_env, f"sink {cfg.name}")
        self._session = requests.Session()
        self._requests = requests

    def send(self, alert: Alert) -> None:
        body = alert.payload.encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": alert.idempotency_key}
        if self.secret is not None:
            headers["X-Inspector-Signature"] = sign(self.secret, body)
        try:
            r = self._session.post(self.url, data=body, headers=headers, timeout=self.cfg.timeout_s)
        except self._requests.RequestException as e:
            raise SinkError(f"POST failed ({type(e).__name__})") from None
        if not 200 <= r.status_code < 300:
            raise SinkError(f"POST answered HTTP {r.status_code}")

    def close(self) -> None:
        self._session.close()


class AppriseSink:
    """Slack, Teams, e-mail, ntfy, ... through one Apprise URL."""

    def __init__(self, cfg: AppriseSinkConfig, line: str) -> None:
        import apprise

        self.name, self.cfg, self.line = cfg.name, cfg, line
        self._apprise = apprise.Apprise()
        if not self._apprise.add(expand_env(cfg.url, f"sink {cfg.name}")):
            raise InspectorError(f"sink {cfg.name}: Apprise does not understand the URL (check its scheme)")

    def send(self, alert: Alert) -> None:
        p = json.loads(alert.payload)
        title = self.cfg.title.format(line=self.line, source=alert.source, score=p.get("score"))
        body = (
            f"Defect on {p.get('source')} at {p.get('created_at')}: score {p.get('score')} x threshold, "
            f"model {p.get('model_version')}, image {p.get('image_path') or 'not saved'} (key {alert.idempotency_key})"
        )
        if not self._apprise.notify(title=title, body=body):
            raise SinkError("Apprise could not deliver the notification")

    def close(self) -> None:
        pass


def build_sink(cfg: SinkConfig, line: str) -> Sink:
    """The sink for one config entry (errors a user can fix raise InspectorError)."""
    kinds = {"mqtt": MqttSink, "webhook": WebhookSink, "apprise": AppriseSink}
    return kinds[cfg.kind](cfg, line)
