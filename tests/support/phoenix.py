"""Client frames as realtime-js builds them, for tests of the Supabase endpoint."""

from __future__ import annotations

JSON_ENCODING = 1


def push_frame(
    *,
    topic: str = "realtime:room",
    event: str = "cursor",
    join_ref: str = "",
    ref: str = "",
    metadata: str = "",
    encoding: int = JSON_ENCODING,
    body: bytes = b"{}",
    kind: int = 3,
) -> bytes:
    """A kind-3 frame as realtime-js's ``_encodeUserBroadcastPush`` writes it."""
    parts = [part.encode() for part in (join_ref, ref, topic, event, metadata)]
    header = bytes([kind, *(len(part) for part in parts), encoding])
    return header + b"".join(parts) + body
