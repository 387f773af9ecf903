"""The front socket's requests, one handler per kind: reads go to the reader threads, new jobs to intake
(answered once their photos are on disk), the rest is answered at once."""
from __future__ import annotations

from collections.abc import Callable

import zmq

from app.broker.cameras import Cameras
from app.broker.deletion import Deletion
from app.broker.erasure import Erasure
from app.broker.intake import Intake
from app.broker.reads import Reads
from app.broker.unknown import UnknownFaces
from app.shared.api_keys import KeyStore
from app.shared.storage import StorageFull, StoreUnavailable, sqlite_full
from app.wire import protocol as p
from app.wire.curve import FRONTS, BrokerAuth
from app.wire.protocol import FrontError, ProtocolError, escape
from constants import Settings
from logger import logger


class Fronts:
    def __init__(self, settings: Settings, front: zmq.Socket, auth: BrokerAuth, keystore: KeyStore, reads: Reads,
                 intake: Intake, deletion: Deletion, erasure: Erasure, status: Callable[[], dict],
                 cameras: Cameras):
        self.s, self.front, self.auth, self.keystore = settings, front, auth, keystore
        self.reads, self.intake, self.erasure = reads, intake, erasure
        self.handlers: dict[bytes, Callable[[dict], dict]] = {
            # the erasure (with the unknown faces named as the person), then the cameras follow it
            p.ERASE: lambda h: cameras.erase(lambda label, tenant: self.erase({"label": label, "tenant": tenant}),
                                             h["label"], h["tenant"]),
            p.STATUS: lambda h: status(),
            p.KEYADD: lambda h: {"key": self.add_key(h)},
            p.KEYREVOKE: lambda h: {"id": h["id"], "revoked": keystore.revoke(h["id"])},
            p.KEYLIST: lambda h: {"keys": keystore.list(h.get("tenant"))},
            p.DELETE: lambda h: deletion.delete_and_wipe(h["id"], h.get("tenant")),
            **cameras.handlers(),
        }
        self.unknown: UnknownFaces | None = None
        self.cameras = cameras

    def on_message(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 3 or frames[1].bytes != b"":
            logger.warning("front: dropped a message that is not a request envelope")
            return
        if not self.auth.allowed[FRONTS].permits(str(frames[-1].get("User-Id"))):
            logger.warning("front: dropped a message from a key that is no longer allowed")
            return
        identity, msg = frames[0].bytes, [f.bytes for f in frames[2:]]
        try:
            command, header, blobs = p.parse_front(msg, self.s)
        except ProtocolError as exc:
            logger.warning("front: refused a request: {}", escape(exc))
            self.refuse(identity, {"code": "BAD_REQUEST", "message": escape(exc)})
            return
        self.reply(identity, lambda: self.serve(identity, command, header, blobs))

    def serve(self, identity: bytes, command: bytes, header: dict, blobs: list[bytes]) -> dict | None:
        """A checked request -> its answer, or None when it is answered later: reads by a reader thread, new
        jobs once the upload writer has stored their photos (`Intake.on_stored`)."""
        if command in p.READ_COMMANDS:
            self.reads.ask(identity, command, header)
            return None
        if command == p.CAMSNAP:  # answered with a data frame
            body, data = self.cameras.snapshot(header)
            self.front.send_multipart([identity, b"", *p.pack(p.OK, body, data)])
            return None
        if command in (p.SUBMIT, p.DERIVE, p.VIDEO):
            self.intake.begin(identity, self.intake.admit(command, header, blobs))
            return None
        if command in p.UNKNOWN_COMMANDS:
            return self.unknown_faces(identity, command, header, blobs)
        return self.handlers[command](header)

    def erase(self, header: dict) -> dict:
        """A person out of every model of a tenant, and out of the unknown faces named as them."""
        named = self.unknown.labelled(header["label"], header["tenant"]) if self.unknown is not None else 0
        answer = self.erasure.erase(header["label"], header["tenant"])  # (deletes the models they were named into)
        if self.unknown is not None:
            self.unknown.erase(header["label"], header["tenant"])
            answer["removed"]["unknown_faces"] = named
        return answer

    def unknown_faces(self, identity: bytes, command: bytes, header: dict, blobs: list[bytes]) -> dict | None:
        """The unknown-face messages (app/broker/unknown.py); a chip is answered with its bytes."""
        u = self.unknown
        if u is None:
            raise FrontError("NOT_FOUND", "this broker keeps no unknown faces")
        with sqlite_full("the unknown faces' store"):  # a full disk: 507, and every face kept stays
            return self.unknown_command(u, identity, command, header, blobs)

    def unknown_command(self, u: UnknownFaces, identity: bytes, command: bytes, header: dict,
                        blobs: list[bytes]) -> dict | None:
        model, tenant = header.get("model", ""), header.get("tenant")
        if command == p.UKEEP:
            return u.keep(model, tenant, header.get("key"), header["source"], header["faces"], blobs)
        if command == p.UGROUPS:
            return u.groups(model, tenant)
        if command == p.UCOUNT:
            return {"counts": u.counts(header["ids"], tenant)}
        if command == p.UMERGE:
            return u.merge(model, tenant, header["clusters"])
        if command == p.UMOVE:
            return u.move(model, tenant, header["cluster"], header["face"], header.get("to"))
        if command == p.UDISCARD:
            return u.discard(model, tenant, header["cluster"])
        details, chip = u.chip(model, tenant, header["cluster"], header["face"])
        self.front.send_multipart([identity, b"", *p.pack(p.OK, details, [chip])])
        return None

    def add_key(self, header: dict) -> dict:
        """A key a front made (its hash: the secret never reaches the broker)."""
        if self.keystore.lookup(header["id"]) is not None:  # ids are random: this is a replay
            raise FrontError("CONFLICT", "a key with this id exists")
        return self.keystore.add(header["id"], header["tenant"], header["role"], header.get("name"),
                                 bytes.fromhex(header["salt"]), bytes.fromhex(header["hash"]))

    def reply(self, identity: bytes, answer: Callable[[], dict | None]) -> None:
        """Answer a front with OK and what `answer` returns (nothing yet if None), or ERR with the code of
        what it raised."""
        try:
            body = answer()
            if body is None:
                return
            frames = p.pack(p.OK, body)
        except FrontError as exc:
            frames = p.pack(p.ERR, {"code": exc.code, "message": exc.message})
        except StoreUnavailable as exc:
            frames = p.pack(p.ERR, {"code": "STORE_UNAVAILABLE", "message": str(exc)})
        except StorageFull:
            frames = p.pack(p.ERR, {"code": "INSUFFICIENT_STORAGE", "message": "the data disk is full"})
        except Exception as exc:  # never let one request take the broker down
            logger.exception("front request failed")
            frames = p.pack(p.ERR, {"code": "INTERNAL", "message": f"{type(exc).__name__}"})
        self.front.send_multipart([identity, b"", *frames])

    def refuse(self, identity: bytes, error: dict) -> None:
        self.front.send_multipart([identity, b"", *p.pack(p.ERR, error)])
