"""WebSocket frames as the server sends them (RFC 6455, section 5.2).

Server frames are never masked and we negotiate no extension, so a frame's bytes
depend only on its payload: one frame built for a change serves every client.
"""

from __future__ import annotations

import struct

__all__ = ["text_frame"]

_FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    """A complete, final, unmasked text frame carrying ``payload``."""
    length = len(payload)
    if length < 126:
        header = bytes((_FIN_TEXT, length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", _FIN_TEXT, 126, length)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, length)
    return header + payload
