"""Integration tests for broadcaster.auth.jwks: the JWKS fetch over real HTTP.

A tiny identity provider runs on 127.0.0.1 (port 0) in a thread: it serves a
JWKS, errors, redirects, an oversized body and a server that answers too
slowly. The verifier fetches from it with urllib in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from broadcaster.auth.tokens import JWTVerifier
from broadcaster.exceptions import AuthenticationError
from tests.support.timeouts import seconds, within

NOW = 1_700_000_000.0


class IdP:
    """State shared with the request handler."""

    def __init__(self) -> None:
        self.keys: list[Any] = []
        self.hits: dict[str, int] = {}
        self.release = threading.Event()  # set at teardown: frees slow handlers
        self.url = ""

    def hit(self, path: str) -> None:
        self.hits[path] = self.hits.get(path, 0) + 1


def handler_for(idp: IdP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            idp.hit(self.path)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.route()  # a client that gave up is no error

        def route(self) -> None:
            if self.path == "/jwks.json":
                self.reply(200, json.dumps({"keys": idp.keys}).encode())
            elif self.path == "/status/500":
                self.reply(500, b"internal error")
            elif self.path == "/redirect":
                self.redirect(f"{idp.url}/jwks.json")
            elif self.path == "/redirect-to-file":
                self.redirect("file:///etc/passwd")
            elif self.path == "/redirect-to-ftp":
                self.redirect("ftp://127.0.0.1/jwks.json")
            elif self.path == "/huge":
                self.reply(200, b" " * (2 * 1024 * 1024))
            elif self.path == "/slow":
                idp.release.wait(seconds(5))
                self.reply(200, json.dumps({"keys": idp.keys}).encode())
            elif self.path == "/drip":
                self.send_response(200)
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                while not idp.release.wait(0.02):
                    self.wfile.write(b" ")
                    self.wfile.flush()
            else:
                self.reply(404, b"not found")

        def reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@pytest.fixture
def idp() -> Iterator[IdP]:
    state = IdP()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-idp", daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(seconds(5))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key_2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey, kid: str) -> Any:
    return RSAAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": kid, "alg": "RS256"}


def token(key: rsa.RSAPrivateKey, kid: str) -> str:
    claims = {"sub": "user-1", "exp": int(NOW) + 300}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def verifier(url: str, clock: Clock | None = None, **kwargs: Any) -> JWTVerifier:
    kwargs.setdefault("jwks_timeout", seconds(2))
    return JWTVerifier(jwks_url=url, clock=clock or Clock(), **kwargs)


async def refusal(verifier: JWTVerifier, token: str, units: float = 5) -> str:
    with pytest.raises(AuthenticationError) as caught:
        await within(verifier.verify(token), units)
    assert caught.value.code == "unauthorized"
    return caught.value.message


async def test_keys_are_fetched_over_http(idp: IdP, rsa_key: rsa.RSAPrivateKey) -> None:
    idp.keys = [jwk(rsa_key, "k1")]
    jwks = verifier(f"{idp.url}/jwks.json")

    identities = await within(
        asyncio.gather(*(jwks.verify(token(rsa_key, "k1")) for _ in range(10)))
    )

    assert {identity.subject for identity in identities} == {"user-1"}
    assert idp.hits == {"/jwks.json": 1}


async def test_a_rotated_key_is_fetched_on_an_unknown_kid(
    idp: IdP, rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    clock = Clock()
    idp.keys = [jwk(rsa_key, "old")]
    jwks = verifier(f"{idp.url}/jwks.json", clock)
    await within(jwks.verify(token(rsa_key, "old")))

    clock.now += 60
    idp.keys = [jwk(rsa_key_2, "new")]

    assert (await within(jwks.verify(token(rsa_key_2, "new")))).subject == "user-1"
    assert idp.hits == {"/jwks.json": 2}


async def test_an_http_error_is_unauthorized_and_logged(
    idp: IdP, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    jwks = verifier(f"{idp.url}/status/500")

    with caplog.at_level(logging.ERROR, logger="broadcaster.auth.jwks"):
        assert "could not be fetched" in await refusal(jwks, token(rsa_key, "k1"))

    [record] = [r for r in caplog.records if r.name == "broadcaster.auth.jwks"]
    assert record.exc_info is not None
    assert "500" in str(record.exc_info[1])


async def test_a_same_scheme_redirect_is_followed(idp: IdP, rsa_key: rsa.RSAPrivateKey) -> None:
    idp.keys = [jwk(rsa_key, "k1")]
    jwks = verifier(f"{idp.url}/redirect")

    assert (await within(jwks.verify(token(rsa_key, "k1")))).subject == "user-1"
    assert idp.hits == {"/redirect": 1, "/jwks.json": 1}


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/redirect-to-file", "is not allowed"),  # urllib's own check
        ("/redirect-to-ftp", "refusing a redirect"),  # ours: urllib would follow ftp
    ],
)
async def test_a_redirect_to_another_scheme_is_refused(
    idp: IdP, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture, path: str, why: str
) -> None:
    jwks = verifier(f"{idp.url}{path}")

    with caplog.at_level(logging.ERROR, logger="broadcaster.auth.jwks"):
        await refusal(jwks, token(rsa_key, "k1"))

    assert any(why in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


async def test_an_oversized_jwks_is_refused(
    idp: IdP, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    jwks = verifier(f"{idp.url}/huge")

    with caplog.at_level(logging.ERROR, logger="broadcaster.auth.jwks"):
        await refusal(jwks, token(rsa_key, "k1"))

    assert any("larger than" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


@pytest.mark.parametrize("path", ["/slow", "/drip"])
async def test_a_slow_idp_times_out(idp: IdP, rsa_key: rsa.RSAPrivateKey, path: str) -> None:
    timeout = seconds(0.3)
    jwks = verifier(f"{idp.url}{path}", jwks_timeout=timeout)

    started = time.monotonic()
    assert "could not be fetched" in await refusal(jwks, token(rsa_key, "k1"))

    assert time.monotonic() - started < timeout + seconds(1)


async def test_a_closed_port_is_unauthorized(rsa_key: rsa.RSAPrivateKey) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    jwks = verifier(f"http://127.0.0.1:{port}/jwks.json")

    assert "could not be fetched" in await refusal(jwks, token(rsa_key, "k1"))
