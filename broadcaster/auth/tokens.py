"""Token verification: who a client is, from the JWT it presents.

:class:`JWTVerifier` checks a JSON Web Token against the key material it was
configured with and returns an :class:`Identity`, or raises
:class:`~broadcaster.exceptions.AuthenticationError` whose ``code`` is
``token_expired`` for an expired token and ``unauthorized`` for anything else.

Key material, any combination of:

* a shared **secret** for HS256, HS384 and HS512 (at least 32 bytes; an HS
  algorithm is only accepted when the secret is at least as long as its hash,
  as RFC 7518 §3.2 requires: 32, 48 and 64 bytes);
* a **public key** in PEM (or a PEM certificate): RSA (2048 bits or more) for
  RS256, EC P-256 / P-384 / P-521 for ES256 / ES384 / ES512, Ed25519 or
  Ed448 for EdDSA;
* a **JWKS URL** of an identity provider, fetched over HTTP(S) and cached
  (:mod:`broadcaster.auth.jwks`).

The key is chosen by the token header's ``alg`` and ``kid``, and every key is
bound to the algorithms its type allows, so a public key is never used as an
HMAC secret nor a secret as a public key (algorithm confusion). ``alg: none``
is always refused, and so is any algorithm outside the allow-list. Keys named
by the token itself (``jwk``, ``jku``, ``x5u`` headers) are never used.

Claims: ``exp`` (optional; past it the token is expired), ``nbf`` (optional),
``iat`` (optional; must be a number, not compared with the clock), ``iss``
and ``aud`` when an issuer or audience is configured. ``leeway`` seconds of
clock skew are tolerated on ``exp`` and ``nbf``.

Error messages say why a token was refused; they never repeat the token.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import HMACAlgorithm

from ..exceptions import AuthenticationError, ConfigurationError
from ..protocols.native import TOKEN_EXPIRED, UNAUTHORIZED
from .identity import Identity
from .jwks import JWKS, JWKSFetch, http_fetch
from .keys import (
    ASYMMETRIC,
    HMAC_MIN_BYTES,
    MIN_RSA_BITS,
    SUPPORTED_ALGORITHMS,
    Key,
    as_verification_key,
    key_family,
)

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "JWKSFetch",
    "JWTVerifier",
    "read_key",
]

logger = logging.getLogger(__name__)


def read_key(value: str) -> str:
    """A key setting's text: ``value`` itself, or the file it names as ``@path``."""
    if not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the key file {str(path)!r}: {exc}") from None


class JWTVerifier:
    """Verifies JWTs against a secret, a PEM public key and/or a JWKS URL.

    ``algorithms`` is an explicit allow-list; by default it follows from the
    key material (see the module docstring). ``clock`` returns unix seconds
    and drives the ``exp``/``nbf`` checks and the JWKS cache. A JWKS is cached
    for ``jwks_cache_seconds``; a token naming an unknown ``kid`` triggers a
    refetch, but fetches start at most once per ``jwks_refetch_interval``
    seconds, whatever the reason, and concurrent verifications share one
    fetch. A fetch taking longer than ``jwks_timeout`` seconds fails; when a
    refresh fails, the keys of the last good fetch stay in use. ``jwks_fetch``
    replaces the HTTP fetch (tests).
    """

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        jwks_url: str | None = None,
        algorithms: Sequence[str] | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 0,
        jwks_cache_seconds: float = 300,
        jwks_timeout: float = 5,
        jwks_refetch_interval: float = 10,
        jwks_fetch: JWKSFetch | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if secret is None and public_key is None and jwks_url is None:
            raise ConfigurationError(
                "token verification needs a secret, a public key or a JWKS URL"
            )
        allowed = _allow_list(algorithms)
        for name, value in (("issuer", issuer), ("audience", audience)):
            if value is not None and not value:
                raise ConfigurationError(f"the JWT {name} must not be empty")
        _check_number("leeway", leeway, minimum=0, inclusive=True)
        _check_number("jwks_cache_seconds", jwks_cache_seconds, minimum=0, inclusive=False)
        _check_number("jwks_timeout", jwks_timeout, minimum=0, inclusive=False)
        _check_number("jwks_refetch_interval", jwks_refetch_interval, minimum=0, inclusive=True)

        self._issuer = issuer
        self._audience = audience
        self._leeway = float(leeway)
        self._clock = clock
        self._static: list[Key] = []
        if secret is not None:
            self._static.append(_secret_key(secret, allowed))
        if public_key is not None:
            self._static.append(_pem_key(public_key, allowed))
        self._jwks: JWKS | None = None
        if jwks_url is not None:
            if allowed is not None and not allowed & ASYMMETRIC:
                raise ConfigurationError(
                    "a JWKS URL is configured but no asymmetric algorithm is allowed"
                )
            self._jwks = JWKS(
                jwks_url,
                allowed,
                fetch=jwks_fetch or http_fetch(jwks_timeout),
                cache_seconds=float(jwks_cache_seconds),
                refetch_interval=float(jwks_refetch_interval),
                timeout=float(jwks_timeout),
                clock=clock,
            )

        usable: set[str] = set()
        for key in self._static:
            usable |= key.algorithms
        if self._jwks is not None:
            usable |= allowed & ASYMMETRIC if allowed is not None else ASYMMETRIC
        if allowed is not None and allowed - usable:
            unusable = ", ".join(sorted(allowed - usable))
            raise ConfigurationError(f"no configured key can verify tokens signed with {unusable}")
        self._accepted = frozenset(usable)

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms accepted in a token's ``alg`` header."""
        return self._accepted

    async def verify(self, token: str) -> Identity:
        """The identity in ``token``; raises :class:`AuthenticationError` if refused."""
        try:
            return await self._verify(token)
        except AuthenticationError as exc:
            logger.debug("token refused: %s", exc)
            raise

    async def _verify(self, token: str) -> Identity:
        if not isinstance(token, str) or not token:
            raise _unauthorized("no token was given")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _unauthorized("the token is malformed") from None
        alg = header.get("alg")
        kid = header.get("kid")  # PyJWT has checked it is a string if present
        if not isinstance(alg, str) or not alg:
            raise _unauthorized("the token names no signing algorithm")
        if alg.lower() == "none":
            raise _unauthorized("unsigned tokens (alg none) are refused")
        if alg not in self._accepted:
            named = repr(alg) if alg in SUPPORTED_ALGORITHMS else "an unsupported algorithm"
            raise _unauthorized(f"the token is signed with {named}, which is not accepted")

        # Keys of our own first: they need no fetch, so they work while the IdP is down.
        static = [key for key in self._static if alg in key.algorithms]
        payload = self._decode_with(token, static)
        tried = bool(static)
        kid_unmatched = False
        if payload is None and self._jwks is not None and alg in ASYMMETRIC:
            fetched = await self._jwks.keys_for(alg, kid if isinstance(kid, str) else None)
            payload = self._decode_with(token, fetched)
            tried = tried or bool(fetched)
            kid_unmatched = not fetched and isinstance(kid, str)
        if payload is None:
            if kid_unmatched:
                raise _unauthorized(f"no {alg} key matches the token's key id (kid)")
            if tried:
                raise _unauthorized("the token's signature does not verify")
            raise _unauthorized(f"no configured key verifies {alg} tokens")
        return self._identity(payload)

    def _decode_with(self, token: str, keys: Sequence[Key]) -> dict[str, Any] | None:
        """The payload of the first key the signature verifies with; None if none does."""
        for key in keys:
            try:
                return self._decode(token, key)
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise _unauthorized(_reason(exc)) from None
        return None

    def _decode(self, token: str, key: Key) -> dict[str, Any]:
        # The time claims are checked in _identity, against the injectable clock.
        return jwt.decode(
            token,
            key=key.material,
            algorithms=sorted(key.algorithms),
            issuer=self._issuer,
            audience=self._audience,
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_iss": True,
                "verify_aud": self._audience is not None,
            },
        )

    def _identity(self, payload: dict[str, Any]) -> Identity:
        now = self._clock()
        exp = _numeric_date(payload, "exp")
        nbf = _numeric_date(payload, "nbf")
        _numeric_date(payload, "iat")
        if exp is not None and exp <= now - self._leeway:
            raise AuthenticationError(TOKEN_EXPIRED, "the token has expired")
        if nbf is not None and nbf > now + self._leeway:
            raise _unauthorized("the token is not valid yet (nbf is in the future)")
        subject = payload.get("sub")
        if subject is not None and not isinstance(subject, str):
            raise _unauthorized("the token's subject (sub) is not a string")
        return Identity(claims=MappingProxyType(payload), expires_at=exp, subject=subject)


def _unauthorized(message: str) -> AuthenticationError:
    return AuthenticationError(UNAUTHORIZED, message)


def _reason(exc: jwt.PyJWTError) -> str:
    """Why PyJWT refused a token, in words of ours (PyJWT's may quote the token)."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the token has no {exc.claim} claim"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "the token's issuer (iss) is not accepted"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "the token's audience (aud) is not accepted"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "the token's algorithm is not accepted for its key"
    if isinstance(exc, jwt.InvalidKeyError):
        return "the selected key cannot verify the token"
    if isinstance(exc, jwt.DecodeError):
        return "the token is malformed"
    return f"the token is invalid ({type(exc).__name__})"


def _numeric_date(payload: Mapping[str, Any], claim: str) -> float | None:
    """A NumericDate claim as a float; None if absent."""
    value = payload.get(claim)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _unauthorized(f"the token's {claim} claim is not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise _unauthorized(f"the token's {claim} claim is out of range")
    return number


def _check_number(name: str, value: float, *, minimum: float, inclusive: bool) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value)
    ok = ok and (value >= minimum if inclusive else value > minimum)
    if not ok:
        bound = "at least" if inclusive else "more than"
        raise ConfigurationError(f"{name} must be a finite number {bound} {minimum}, not {value!r}")


def _allow_list(algorithms: Sequence[str] | None) -> frozenset[str] | None:
    if algorithms is None:
        return None
    if isinstance(algorithms, str):  # "RS256,HS256" straight from a setting
        algorithms = [part.strip() for part in algorithms.split(",") if part.strip()]
    if not algorithms:
        raise ConfigurationError("the JWT algorithm allow-list must not be empty")
    for alg in algorithms:
        if alg.lower() == "none":
            raise ConfigurationError("unsigned tokens (alg none) are never accepted")
        if alg not in SUPPORTED_ALGORITHMS:
            supported = ", ".join(SUPPORTED_ALGORITHMS)
            raise ConfigurationError(f"unknown JWT algorithm {alg!r}; supported: {supported}")
    return frozenset(algorithms)


def _secret_key(secret: str, allowed: frozenset[str] | None) -> Key:
    material = secret.encode("utf-8")
    shortest = min(HMAC_MIN_BYTES.values())
    if len(material) < shortest:
        raise ConfigurationError(
            f"the JWT secret must be at least {shortest} bytes long, not {len(material)}"
        )
    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(material)
    except jwt.InvalidKeyError:
        raise ConfigurationError(
            "the JWT secret looks like a public key or a JWK; configure it as the public key"
        ) from None
    fitting = {alg for alg, least in HMAC_MIN_BYTES.items() if len(material) >= least}
    if allowed is None:
        return Key(material, frozenset(fitting), None)
    too_short = sorted(allowed & (set(HMAC_MIN_BYTES) - fitting))
    if too_short:
        need = max(HMAC_MIN_BYTES[alg] for alg in too_short)
        raise ConfigurationError(
            f"{', '.join(too_short)} needs a secret of at least {need} bytes,"
            f" the JWT secret has {len(material)}"
        )
    algorithms = frozenset(allowed & fitting)
    if not algorithms:
        raise ConfigurationError("a JWT secret is configured but no HS algorithm is allowed")
    return Key(material, algorithms, None)


def _pem_key(text: str, allowed: frozenset[str] | None) -> Key:
    data = text.strip().encode("utf-8")
    if b"PRIVATE KEY" in data:
        raise ConfigurationError("the JWT public key is a private key; give its public half")
    try:
        if b"CERTIFICATE" in data:
            loaded: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            loaded = load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigurationError(
            f"the JWT public key is not a valid PEM public key: {exc}"
        ) from None
    key = as_verification_key(loaded)
    if key is None:
        raise ConfigurationError(
            "the JWT public key must be RSA, EC (P-256, P-384, P-521), Ed25519 or Ed448"
        )
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ConfigurationError(
            f"the JWT public key is a {key.key_size}-bit RSA key; at least {MIN_RSA_BITS} needed"
        )
    family, default = key_family(key)
    algorithms = family & allowed if allowed is not None else frozenset({default})
    if not algorithms:
        raise ConfigurationError(
            f"the JWT public key verifies {', '.join(sorted(family))}, none of them allowed"
        )
    return Key(key, algorithms, None)
