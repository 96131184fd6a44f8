"""Several server processes sharing one listening socket: ``broadcaster serve --workers N``.

The parent binds the socket, forks the workers and supervises them; the kernel
spreads new connections across the workers. Each worker is a whole server with
its own LISTEN connection and hub, like a replica behind a load balancer:
cursors are valid on all of them. A worker that dies is replaced; SIGTERM or
SIGINT stops them all (their clients get close code 1001).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import socket
import time
from types import FrameType

from ..settings import Settings
from .server import Server

__all__ = ["bind", "run_workers"]

logger = logging.getLogger(__name__)

# A worker that dies sooner than this after starting is not restarted in a loop.
_MIN_LIFETIME = 5.0


def bind(host: str, port: int) -> socket.socket:
    """The listening socket the workers share (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # The protocol named, not 0: asyncio turns Nagle's algorithm off
    # (TCP_NODELAY) only on sockets whose proto is IPPROTO_TCP, and an accepted
    # socket inherits the listener's. With Nagle on, a small frame sent while
    # an earlier one is unacknowledged waits for the client's delayed ACK, up
    # to 40 ms: at 2,000 updates/s, p99 was 41 ms with two workers, 8 with one.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(settings: Settings, database_url: str, sock: socket.socket) -> None:
    # The parent's handlers were inherited; they must not run here. A Ctrl-C
    # in a terminal reaches every process: the parent turns it into a SIGTERM
    # for each worker, so the worker itself ignores it. uvicorn re-raises the
    # SIGTERM it stopped on; a no-op handler of ours makes the worker exit 0.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)

    async def run() -> None:
        server = Server(settings, database_url)
        await server.start(sockets=[sock])
        await server.wait()

    asyncio.run(run())


def run_workers(settings: Settings, database_url: str, count: int) -> int:
    """Serve with ``count`` worker processes until SIGTERM or SIGINT; return the exit code."""
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    print(
        f"broadcaster: serving on http://{host}:{port} (WebSocket ws://{host}:{port}/ws) "
        f"with {count} workers",
        flush=True,
    )
    context = multiprocessing.get_context("fork")
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in workers.values():
            if process.is_alive() and process.pid is not None:
                process.terminate()

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker, args=(settings, database_url, sock))
        process.start()
        return process

    workers: dict[int, multiprocessing.process.BaseProcess] = {}
    started: dict[int, float] = {}
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for slot in range(count):
        workers[slot] = start()
        started[slot] = time.monotonic()
    failed = False
    while workers:
        for slot, process in list(workers.items()):
            process.join(timeout=0.2)
            if process.exitcode is None:
                continue
            if stopping:
                del workers[slot]
                failed = failed or process.exitcode != 0
                continue
            lived = time.monotonic() - started[slot]
            logger.error("worker %d exited with %s after %.1fs", slot, process.exitcode, lived)
            if lived < _MIN_LIFETIME:
                # Dying at once (a bad setting, an unusable port): restarting
                # would only loop; stop everything and say so.
                failed = True
                stop(signal.SIGTERM, None)
                del workers[slot]
                continue
            workers[slot] = start()
            started[slot] = time.monotonic()
    sock.close()
    return 1 if failed else 0
