"""JWKS: the signing keys an identity provider publishes at a URL, fetched and cached.

A :class:`JWKS` fetches its document over HTTP(S) (or with the fetch it is
given), keeps the keys for ``cache_seconds``, refetches at most once per
``refetch_interval`` (also on an unknown ``kid``, as a provider rotates its
keys), and shares one fetch between concurrent verifications. A refresh that
fails keeps the keys of the last good fetch. Only signing keys of a type and
size a :class:`~broadcaster.auth.tokens.JWTVerifier` accepts are kept, each
bound to its algorithms (:mod:`broadcaster.auth.keys`); symmetric keys never.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.client import HTTPMessage
from typing import IO

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from ..exceptions import AuthenticationError, ConfigurationError
from ..protocols.native import UNAUTHORIZED
from .keys import MIN_RSA_BITS, Key, as_verification_key, key_family

__all__ = ["JWKS", "JWKSFetch", "http_fetch"]

logger = logging.getLogger(__name__)

_MAX_JWKS_BYTES = 1024 * 1024

#: Fetches a JWKS document: URL in, response body out.
JWKSFetch = Callable[[str], Awaitable[bytes]]


@dataclass(frozen=True)
class _KeySet:
    keys: tuple[Key, ...]

    def kids(self) -> set[str | None]:
        return {key.kid for key in self.keys}

    def matching(self, alg: str, kid: str | None) -> list[Key]:
        return [
            key for key in self.keys if alg in key.algorithms and (kid is None or key.kid == kid)
        ]


class JWKS:
    """The keys at a JWKS URL: cached, refetched rate-limited, one fetch at a time."""

    def __init__(
        self,
        url: str,
        allowed: frozenset[str] | None,
        *,
        fetch: JWKSFetch,
        cache_seconds: float,
        refetch_interval: float,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigurationError(f"the JWKS URL must be an http(s) URL, not {url!r}")
        self.url = url
        self._allowed = allowed
        self._fetch = fetch
        self._cache_seconds = cache_seconds
        self._refetch_interval = refetch_interval
        self._timeout = timeout
        self._clock = clock
        self._keys: _KeySet | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._task: asyncio.Task[None] | None = None

    async def keys_for(self, alg: str, kid: str | None) -> list[Key]:
        """The cached keys that may verify an ``alg`` token with ``kid``."""
        now = self._clock()
        if self._keys is None or not self._fetched_at <= now < self._fetched_at + (
            self._cache_seconds
        ):
            await self._refresh()
        if self._keys is None:
            raise AuthenticationError(
                UNAUTHORIZED, "the identity provider's signing keys could not be fetched"
            )
        found = self._keys.matching(alg, kid)
        if found or kid is None or kid in self._keys.kids():
            return found
        # An unknown kid: the provider may have rotated its keys since the last fetch.
        await self._refresh()
        return self._keys.matching(alg, kid)

    async def _refresh(self) -> None:
        """Fetch the keys, unless a fetch started less than refetch_interval ago."""
        if self._task is None:
            now = self._clock()
            if self._attempted_at <= now < self._attempted_at + self._refetch_interval:
                return
            self._attempted_at = now
            self._task = asyncio.get_running_loop().create_task(self._fetch_and_store())
        # Shielded: a cancelled verification must not cancel the fetch others wait on.
        await asyncio.shield(self._task)

    async def _fetch_and_store(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                body = await self._fetch(self.url)
            self._keys = _parse_jwks(body, self._allowed, self.url)
            self._fetched_at = self._clock()
        except Exception:
            if self._keys is None:
                logger.exception("fetching the JWKS from %s failed", self.url)
            else:
                logger.warning(
                    "fetching the JWKS from %s failed; keeping the keys fetched before",
                    self.url,
                    exc_info=True,
                )
        finally:
            self._task = None


def _parse_jwks(body: bytes, allowed: frozenset[str] | None, url: str) -> _KeySet:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"the JWKS at {url} is not JSON: {exc}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"the JWKS at {url} has no 'keys' list")
    keys: list[Key] = []
    for index, entry in enumerate(entries):
        try:
            key = _jwk_key(entry, allowed)
        except (ValueError, TypeError, KeyError, jwt.PyJWTError) as exc:
            logger.warning("skipping key %d of the JWKS at %s: %s", index, url, exc)
            continue
        if key is not None:
            keys.append(key)
    if not keys:
        logger.warning("the JWKS at %s holds no usable signing key", url)
    return _KeySet(tuple(keys))


def _jwk_key(entry: object, allowed: frozenset[str] | None) -> Key | None:
    """The verification key of one JWK; None if it is not meant for us."""
    if not isinstance(entry, dict):
        raise TypeError("not a JSON object")
    kid = entry.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TypeError("its kid is not a string")
    if entry.get("use", "sig") != "sig":
        return None
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    kty = entry.get("kty")
    loaded: object
    if kty == "RSA":
        loaded = RSAAlgorithm.from_jwk(entry)
    elif kty == "EC":
        loaded = ECAlgorithm.from_jwk(entry)
    elif kty == "OKP":
        loaded = OKPAlgorithm.from_jwk(entry)
    elif kty == "oct":
        # A published symmetric key would let anyone who can read it mint tokens.
        raise ValueError("symmetric (oct) keys are not accepted from a JWKS")
    else:
        raise ValueError(f"unsupported key type {kty!r}")
    key = as_verification_key(loaded)
    if key is None:
        raise ValueError("unsupported curve")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError(f"{key.key_size}-bit RSA key; at least {MIN_RSA_BITS} needed")
    family, default = key_family(key)
    alg = entry.get("alg")
    if alg is not None:
        if alg not in family:
            raise ValueError(f"its alg {alg!r} does not fit its key type")
        algorithms = frozenset({alg})
        if allowed is not None:
            algorithms &= allowed
    else:
        algorithms = family & allowed if allowed is not None else frozenset({default})
    if not algorithms:
        return None
    return Key(key, algorithms, kid)


class _HTTPOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) only, and never from https down to http."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        scheme = urllib.parse.urlsplit(newurl).scheme
        if scheme not in ("http", "https") or (req.type == "https" and scheme != "https"):
            raise ValueError(f"refusing a redirect from {req.full_url} to a {scheme} URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _http_get(url: str, timeout: float) -> bytes:
    """GET ``url`` (blocking), at most ``_MAX_JWKS_BYTES``, within about ``timeout``."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "pg-broadcaster"}
    )
    opener = urllib.request.build_opener(_HTTPOnlyRedirects())
    body = bytearray()
    with opener.open(request, timeout=timeout) as response:
        while chunk := response.read1(64 * 1024):
            body += chunk
            if len(body) > _MAX_JWKS_BYTES:
                raise ValueError(f"the JWKS at {url} is larger than {_MAX_JWKS_BYTES} bytes")
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading the JWKS at {url} took over {timeout} s")
    return bytes(body)


def http_fetch(timeout: float) -> JWKSFetch:
    async def fetch(url: str) -> bytes:
        return await asyncio.to_thread(_http_get, url, timeout)

    return fetch
