"""One client connection per protocol: what a client may do, and what it is sent.

A session translates its protocol's messages onto the feed (joins) and the hub
(live batches); the WebSocket adapter (:mod:`broadcaster.net.websocket`) feeds
it messages and gives it a transport to write frames to. What both protocols
share (limits, ordering, the auth timeout, token expiry) is :mod:`.base`.
"""
