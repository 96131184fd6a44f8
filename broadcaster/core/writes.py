"""Coalesced writes: whatever one delivery round sends a connection goes out in one write.

A read's changes are published table by table, and a Supabase binding gets a
frame per change: a client subscribed to several changed tables, or speaking
Phoenix, would cost the server a ``send`` system call per frame, the largest
part of delivering a message. While a round is open (:meth:`Writes.round`,
around the publishing of one read's batches), a connection's frames are held
in order; when it closes, each connection that was sent anything writes them
all at once. One write per client per read, however many frames it carries.

Sans-I/O: a writer is anything with ``write(data)``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Protocol

__all__ = ["Writer", "Writes"]

logger = logging.getLogger(__name__)


class Writer(Protocol):
    def write(self, data: bytes) -> None:
        """Write ``data`` now; never block."""


class Writes:
    """The frames held for each writer while a round is open."""

    __slots__ = ("_held", "holding")

    def __init__(self) -> None:
        self.holding = False
        """Is a round open? Then :meth:`hold` a frame instead of writing it."""
        # A writer's one frame as is (the common case: no list to build), or its frames.
        self._held: dict[Writer, bytes | list[bytes]] = {}

    def hold(self, writer: Writer, frame: bytes) -> None:
        held = self._held.get(writer)
        if held is None:
            self._held[writer] = frame
        elif isinstance(held, list):
            held.append(frame)
        else:
            self._held[writer] = [held, frame]

    @contextlib.contextmanager
    def round(self) -> Iterator[None]:
        """Hold frames until the end of the block (nested: of the outermost block)."""
        if self.holding:
            yield
            return
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            held, self._held = self._held, {}
            for writer, frames in held.items():
                try:
                    writer.write(b"".join(frames) if isinstance(frames, list) else frames)
                except Exception:
                    logger.exception("writing to %r failed", writer)
