"""The loop's side of the read threads (app/broker/reader.py): reads wait in line for an idle reader, the longest
idle first (the ZeroMQ guide's load-balancing pattern); answers go back through the loop."""
from __future__ import annotations

import json
from collections import deque

import zmq

from app.broker.reader import BundleSums, start_readers
from app.wire.protocol import FrontError
from constants import Settings

MAX_PENDING_READS = 10_000   # fronts' reads waiting for a reader thread; beyond, BUSY (503)


class Reads:
    def __init__(self, settings: Settings, ctx: zmq.Context, sums: BundleSums):
        self.socket, self.readers = start_readers(settings, ctx, sums, settings.broker_readers)
        self.idle: deque[bytes] = deque()
        self.pending: deque[list[bytes]] = deque()

    def ask(self, identity: bytes, command: bytes, header: dict) -> None:
        """A front's read, answered when a reader has it done (BUSY when too many wait)."""
        if len(self.pending) >= MAX_PENDING_READS:
            raise FrontError("BUSY", "the broker has too many reads waiting; try again")
        self.pending.append([identity, command, json.dumps(header).encode()])
        self.hand()

    def on_answers(self, front: zmq.Socket) -> None:
        """Readers' answers go back to the fronts that asked (the loop alone owns the front socket); the
        readers are free again."""
        while True:
            try:
                reader, *frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if frames != [b"READY"]:
                front.send_multipart(frames)
            self.idle.append(reader)
        self.hand()

    def hand(self) -> None:
        while self.pending and self.idle:
            self.socket.send_multipart([self.idle.popleft(), *self.pending.popleft()])

    def close(self) -> None:
        for reader in self.readers:
            reader.running = False
        for reader in self.readers:
            reader.join(2)
        self.socket.close(0)
