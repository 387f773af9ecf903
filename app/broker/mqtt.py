"""Camera events over MQTT, as Frigate and Double Take publish theirs, and Home Assistant's discovery.

The broker process holds one paho-mqtt client (FR_MQTT_URL; none when empty), connected in the
background and reconnected by paho: publishing never waits on the MQTT broker (a message made while it is
away waits in paho's bounded queue). Topics, under FR_MQTT_PREFIX and the camera's tenant:

  <prefix>/<tenant>/cameras/<camera id>/events     every event, JSON (QoS 1)
  <prefix>/<tenant>/cameras/<camera id>/person     who is in view now: labels joined by ", ", or "none"
  <prefix>/<tenant>/cameras/<camera id>/attributes the latest event, JSON (the sensor's attributes)
  <prefix>/<tenant>/cameras/<camera id>/state      connecting, live or offline (retained)
  <prefix>/<tenant>/cameras/<camera id>/availability  online while live, else offline (retained)
  <prefix>/<tenant>/people/<person>/events         every event of that person, JSON (QoS 1)

<tenant> and <person> are `level(text)`: the text itself when it is plain (a tenant always is), else a
slug with a hash, so that no two tenants nor two people share a topic; no level holds '/', '+', '#' or NUL.
  homeassistant/sensor/<prefix>_<camera id>/config  discovery: a sensor per camera (retained; FR_MQTT_DISCOVERY)

Nothing that names a person is retained by the MQTT broker, so an erased person leaves nothing there.
"""
from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from typing import Any
from urllib.parse import urlsplit

from constants import Settings
from logger import logger

QUEUE_LIMIT = 1000  # messages paho keeps while the MQTT broker is away (oldest kept, newest dropped)


def slug(text: str) -> str:
    """A topic level from any text: no '/', '+', '#' or spaces (several texts may give the same one)."""
    return re.sub(r"[^a-z0-9_-]+", "_", text.lower()).strip("_")[:100] or "_"


_PLAIN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")


def level(text: str | None) -> str:
    """A topic level that names `text` and nothing else: the text itself when it is plain (lower-case letters,
    digits, '_', '.', '-'; a tenant always is), else its slug and 8 hex digits of its hash, so that 'a.b' and
    'a_b', 'Bob' and 'bob', or two names in other letters never share a topic (one tenant's subscriber must
    not read another's, nor one person's another's). None (no tenant: keys off) -> '_'."""
    if text is None:
        return "_"
    if _PLAIN.fullmatch(text):
        return text
    return f"{slug(text)[:90]}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


class Mqtt:
    def __init__(self, settings: Settings):
        self.s = settings
        self.client: Any = None
        self.in_view: dict[str, dict[int, str]] = {}  # camera id -> open track -> label
        if settings.mqtt_url:
            self.start()

    def start(self) -> None:
        import paho.mqtt.client as paho  # only when configured: the broker without MQTT loads none of it
        parts = urlsplit(self.s.mqtt_url)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{slug(self.s.mqtt_prefix)}-broker")
        if parts.scheme == "mqtts":
            self.client.tls_set()
        self.client.max_queued_messages_set(QUEUE_LIMIT)
        self.client.reconnect_delay_set(1, 30)
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.client.on_connect = lambda c, u, f, rc, props=None: logger.info("mqtt: connected to {}:{} ({})",
                                                                            parts.hostname, port, rc)
        self.client.connect_async(parts.hostname, port, keepalive=30)
        self.client.loop_start()

    def topic(self, row: sqlite3.Row | dict, *levels: str) -> str:
        return "/".join([self.s.mqtt_prefix, level(row["tenant"]), "cameras", row["id"], *levels])

    def publish(self, topic: str, payload: Any, retain: bool = False, qos: int = 1) -> None:
        if self.client is None:
            return
        data = payload if isinstance(payload, (str, bytes)) else json.dumps(payload, ensure_ascii=False)
        try:
            self.client.publish(topic, data, qos=qos, retain=retain)
        except Exception as exc:  # a full queue or a closed client: the event is stored anyway
            logger.warning("mqtt: could not publish to {}: {}", topic, type(exc).__name__)

    def discovery(self, row: sqlite3.Row) -> None:
        if not self.s.mqtt_discovery:
            return
        node = slug(self.s.mqtt_prefix)
        config = {"name": row["name"], "unique_id": f"{node}_{row['id']}", "object_id": f"{node}_{slug(row['name'])}",
                  "state_topic": self.topic(row, "person"), "json_attributes_topic": self.topic(row, "attributes"),
                  "availability_topic": self.topic(row, "availability"), "icon": "mdi:face-recognition",
                  "device": {"identifiers": [f"{node}_{row['id']}"], "name": row["name"],
                             "manufacturer": "api-facial-recognition", "model": "camera"}}
        self.publish(f"homeassistant/sensor/{node}_{row['id']}/config", config, retain=True)

    def camera_state(self, row: sqlite3.Row, state: str, reason: str | None) -> None:
        self.discovery(row)
        self.publish(self.topic(row, "state"), state, retain=True)
        self.publish(self.topic(row, "availability"), "online" if state == "live" else "offline", retain=True)
        if state != "live":
            self.in_view.pop(row["id"], None)

    def event(self, row: sqlite3.Row, view: dict) -> None:
        tracks = self.in_view.setdefault(row["id"], {})
        if view["type"] == "track.start":
            tracks[view["track"]] = view["label"]
        else:
            tracks.pop(view["track"], None)
        self.publish(self.topic(row, "events"), view)
        self.publish(self.topic(row, "attributes"), view)
        self.publish(self.topic(row, "person"), ", ".join(sorted(set(tracks.values()))) or "none")
        self.publish("/".join([self.s.mqtt_prefix, level(row["tenant"]), "people", level(view["label"]),
                               "events"]), view)

    def camera_removed(self, row: sqlite3.Row) -> None:
        """Its retained messages cleared (an empty retained message deletes one)."""
        self.in_view.pop(row["id"], None)
        for level in ("state", "availability"):
            self.publish(self.topic(row, level), b"", retain=True)
        if self.s.mqtt_discovery:
            self.publish(f"homeassistant/sensor/{slug(self.s.mqtt_prefix)}_{row['id']}/config", b"", retain=True)

    def person_erased(self, label: str, tenant: str | None) -> None:
        for tracks in self.in_view.values():
            for track in [t for t, who in tracks.items() if who == label]:
                tracks.pop(track)

    def close(self) -> None:
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
