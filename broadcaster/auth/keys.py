"""Verification keys: key material bound to the algorithms its type may verify.

Shared by the keys a :class:`~broadcaster.auth.tokens.JWTVerifier` is configured
with (a secret, a PEM public key) and those it fetches from a JWKS URL
(:mod:`broadcaster.auth.jwks`). Binding each key to its type's algorithms is
what keeps a public key from being used as an HMAC secret (algorithm confusion).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

__all__ = [
    "ASYMMETRIC",
    "EC_BY_CURVE",
    "EDDSA",
    "HMAC_MIN_BYTES",
    "MIN_RSA_BITS",
    "RSA_ALGORITHMS",
    "SUPPORTED_ALGORITHMS",
    "Key",
    "PublicKey",
    "as_verification_key",
    "key_family",
]

# HMAC algorithms and the shortest secret, in bytes, each may be used with.
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
EDDSA = "EdDSA"
ASYMMETRIC = frozenset((*RSA_ALGORITHMS, *EC_BY_CURVE.values(), EDDSA))

#: Every algorithm a :class:`~broadcaster.auth.tokens.JWTVerifier` can be configured to accept.
SUPPORTED_ALGORITHMS: tuple[str, ...] = (*HMAC_MIN_BYTES, *sorted(ASYMMETRIC))

MIN_RSA_BITS = 2048

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


@dataclass(frozen=True)
class Key:
    """Verification key material bound to the algorithms it may verify."""

    material: bytes | PublicKey
    algorithms: frozenset[str]
    kid: str | None


def as_verification_key(key: object) -> PublicKey | None:
    private = (
        rsa.RSAPrivateKey,
        ec.EllipticCurvePrivateKey,
        ed25519.Ed25519PrivateKey,
        ed448.Ed448PrivateKey,
    )
    if isinstance(key, private):  # a JWK with its private half: verify with the public one
        key = key.public_key()
    if isinstance(key, rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in EC_BY_CURVE:
        return key
    return None


def key_family(key: PublicKey) -> tuple[frozenset[str], str]:
    """The algorithms a key type can verify, and the one it verifies by default."""
    if isinstance(key, rsa.RSAPublicKey):
        return frozenset(RSA_ALGORITHMS), "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = EC_BY_CURVE[key.curve.name]
        return frozenset({alg}), alg
    return frozenset({EDDSA}), EDDSA
