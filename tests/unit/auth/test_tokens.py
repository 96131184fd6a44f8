"""Unit tests for broadcaster.auth.tokens: JWT verification by secret, PEM key and JWKS.

No network: keys are generated here and the JWKS fetch is a fake. The real
HTTP fetch is covered by tests/integration/test_jwks.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

from broadcaster.auth.identity import Identity, TokenVerifier
from broadcaster.auth.tokens import SUPPORTED_ALGORITHMS, JWTVerifier, read_key
from broadcaster.exceptions import AuthenticationError, BroadcasterError, ConfigurationError
from tests.support.timeouts import within

NOW = 1_700_000_000.0
SECRET = "0123456789abcdef" * 4  # 64 bytes: long enough for HS512
ISSUER = "https://idp.example"
AUDIENCE = "broadcaster"


# --- keys and tokens -----------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key_2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def pem(private_key: Any) -> str:
    data: bytes = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data.decode()


def jwk(private_key: Any, kid: str | None = None, alg: str | None = None, **extra: Any) -> Any:
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        data = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = OKPAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        data["kid"] = kid
    if alg is not None:
        data["alg"] = alg
    data.update(extra)
    return data


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "user-1", "iat": int(NOW), "exp": int(NOW) + 300}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def sign(key: Any, alg: str, payload: dict[str, Any] | None = None, kid: str | None = None) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims() if payload is None else payload, key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], sign_with: bytes | None = None) -> str:
    """A token built by hand, HMAC-SHA256-signed with ``sign_with`` or unsigned."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if sign_with is None:
        return signing_input + "."
    mac = hmac.new(sign_with, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeJWKS:
    """A JWKS fetch that serves ``keys``, counts calls and can be held or broken."""

    def __init__(self, *keys: Any) -> None:
        self.keys: list[Any] = list(keys)
        self.calls = 0
        self.urls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.error: Exception | None = None
        self.body: bytes | None = None

    async def __call__(self, url: str) -> bytes:
        self.calls += 1
        self.urls.append(url)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        if self.body is not None:
            return self.body
        return json.dumps({"keys": self.keys}).encode()


JWKS_URL = "https://idp.example/.well-known/jwks.json"


def jwks_verifier(fake: FakeJWKS, clock: Clock | None = None, **kwargs: Any) -> JWTVerifier:
    return JWTVerifier(jwks_url=JWKS_URL, jwks_fetch=fake, clock=clock or Clock(), **kwargs)


async def refused(verifier: JWTVerifier, token: str, code: str = "unauthorized") -> str:
    """The refusal message for ``token``, after checking its code and that it hides the token."""
    with pytest.raises(AuthenticationError) as caught:
        await within(verifier.verify(token))
    assert caught.value.code == code
    message = str(caught.value)
    assert message == caught.value.message
    assert message
    if len(token) > 8:
        assert token not in message
        for part in token.split("."):
            if len(part) > 8:
                assert part not in message
    return message


# --- HMAC ------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hs_tokens_verify_with_the_secret(alg: str) -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())
    token = sign(SECRET, alg, claims(role="admin"))

    identity = await within(verifier.verify(token))

    assert identity == Identity(
        claims={"sub": "user-1", "iat": int(NOW), "exp": int(NOW) + 300, "role": "admin"},
        expires_at=NOW + 300,
        subject="user-1",
    )
    assert isinstance(identity.expires_at, float)


async def test_wrong_secret_is_refused() -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())

    message = await refused(verifier, sign("x" * 64, "HS256"))

    assert "signature" in message


async def test_a_token_without_exp_or_sub_verifies() -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())

    identity = await within(verifier.verify(sign(SECRET, "HS256", {"scope": "read"})))

    assert identity.expires_at is None
    assert identity.subject is None
    assert dict(identity.claims) == {"scope": "read"}


async def test_identity_claims_are_read_only() -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())
    identity = await within(verifier.verify(sign(SECRET, "HS256")))

    with pytest.raises(TypeError):
        identity.claims["sub"] = "someone-else"  # type: ignore[index]


@pytest.mark.parametrize(
    ("length", "accepted"),
    [(32, {"HS256"}), (48, {"HS256", "HS384"}), (64, {"HS256", "HS384", "HS512"})],
)
async def test_hs_algorithms_follow_the_secret_length(length: int, accepted: set[str]) -> None:
    secret = "k" * length
    verifier = JWTVerifier(secret=secret, clock=Clock())

    assert verifier.algorithms == accepted
    for alg in ("HS256", "HS384", "HS512"):
        token = sign(secret, alg) if alg in accepted else sign("k" * 64, alg)
        if alg in accepted:
            assert (await within(verifier.verify(token))).subject == "user-1"
        else:
            assert "not accepted" in await refused(verifier, token)


# --- PEM public keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_fixture", "alg"), [("rsa_key", "RS256"), ("ec_key", "ES256"), ("ed_key", "EdDSA")]
)
async def test_asymmetric_tokens_verify_with_a_pem_key(
    request: pytest.FixtureRequest, key_fixture: str, alg: str
) -> None:
    key = request.getfixturevalue(key_fixture)
    verifier = JWTVerifier(public_key=pem(key), clock=Clock())

    identity = await within(verifier.verify(sign(key, alg)))

    assert verifier.algorithms == {alg}
    assert identity.subject == "user-1"
    assert identity.expires_at == NOW + 300


async def test_a_pem_key_from_another_pair_is_refused(
    rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    verifier = JWTVerifier(public_key=pem(rsa_key), clock=Clock())

    assert "signature" in await refused(verifier, sign(rsa_key_2, "RS256"))


async def test_an_rsa_algorithm_outside_the_default_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JWTVerifier(public_key=pem(rsa_key), clock=Clock())

    assert "'PS256'" in await refused(verifier, sign(rsa_key, "PS256"))


async def test_an_explicit_allow_list_widens_and_narrows(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JWTVerifier(public_key=pem(rsa_key), algorithms=["PS256", "RS512"], clock=Clock())

    assert (await within(verifier.verify(sign(rsa_key, "PS256")))).subject == "user-1"
    assert (await within(verifier.verify(sign(rsa_key, "RS512")))).subject == "user-1"
    assert "not accepted" in await refused(verifier, sign(rsa_key, "RS256"))


async def test_an_allow_list_may_be_a_comma_separated_string(rsa_key: rsa.RSAPrivateKey) -> None:
    verifier = JWTVerifier(
        secret=SECRET, public_key=pem(rsa_key), algorithms="RS256, HS256", clock=Clock()
    )

    assert verifier.algorithms == {"RS256", "HS256"}


async def test_a_pem_certificate_is_accepted(rsa_key: rsa.RSAPrivateKey) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(rsa_key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(rsa_key, hashes.SHA256())
    )
    text = certificate.public_bytes(serialization.Encoding.PEM).decode()
    verifier = JWTVerifier(public_key=text, clock=Clock())

    assert (await within(verifier.verify(sign(rsa_key, "RS256")))).subject == "user-1"


# --- algorithm confusion and alg none --------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_is_refused(alg: str) -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())

    message = await refused(verifier, forge({"alg": alg, "typ": "JWT"}, claims()))

    assert "none" in message


async def test_alg_none_cannot_be_allowed() -> None:
    with pytest.raises(ConfigurationError, match="none"):
        JWTVerifier(secret=SECRET, algorithms=["HS256", "none"])


async def test_a_missing_or_empty_alg_is_refused() -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())

    for header in ({"typ": "JWT"}, {"alg": ""}, {"alg": 256}):
        token = forge(header, claims(), sign_with=SECRET.encode())
        assert "algorithm" in await refused(verifier, token)


async def test_hs_token_signed_with_the_public_key_pem_is_refused(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    public_pem = pem(rsa_key)
    # The classic confusion attack: the attacker HMACs with the (public) PEM text,
    # hoping the verifier feeds its RSA public key to HMAC as the secret.
    token = forge({"alg": "HS256", "typ": "JWT"}, claims(), sign_with=public_pem.encode())

    only_pem = JWTVerifier(public_key=public_pem, clock=Clock())
    assert "'HS256'" in await refused(only_pem, token)

    pem_and_secret = JWTVerifier(secret=SECRET, public_key=public_pem, clock=Clock())
    assert "signature" in await refused(pem_and_secret, token)


async def test_hs_token_signed_with_a_jwks_key_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    fake = FakeJWKS(jwk(rsa_key, kid="k1"))
    verifier = jwks_verifier(fake, secret=SECRET)
    material = json.dumps(jwk(rsa_key, kid="k1")).encode()

    token = forge({"alg": "HS256", "kid": "k1"}, claims(), sign_with=material)

    assert "signature" in await refused(verifier, token)
    assert fake.calls == 0  # HS tokens never consult the JWKS


async def test_a_public_key_cannot_be_configured_as_the_secret(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    with pytest.raises(ConfigurationError, match="public key"):
        JWTVerifier(secret=pem(rsa_key))


async def test_rs_token_is_refused_when_only_a_secret_is_configured(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())

    assert "'RS256'" in await refused(verifier, sign(rsa_key, "RS256"))


async def test_an_ec_token_is_refused_by_an_rsa_key(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    verifier = JWTVerifier(public_key=pem(rsa_key), clock=Clock())

    assert "'ES256'" in await refused(verifier, sign(ec_key, "ES256"))


async def test_an_unknown_algorithm_is_not_echoed() -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())
    token = forge({"alg": "X" * 200}, claims(), sign_with=SECRET.encode())

    message = await refused(verifier, token)

    assert "XXXX" not in message
    assert "unsupported algorithm" in message


# --- claims ----------------------------------------------------------------------------


async def test_an_expired_token_is_token_expired() -> None:
    clock = Clock()
    verifier = JWTVerifier(secret=SECRET, clock=clock)
    token = sign(SECRET, "HS256", claims(exp=int(NOW) + 10))

    assert (await within(verifier.verify(token))).expires_at == NOW + 10
    clock.now = NOW + 10  # exp is the first instant the token is no longer valid
    assert "expired" in await refused(verifier, token, "token_expired")


async def test_nbf_in_the_future_is_unauthorized() -> None:
    clock = Clock()
    verifier = JWTVerifier(secret=SECRET, clock=clock)
    token = sign(SECRET, "HS256", claims(nbf=int(NOW) + 30))

    assert "not valid yet" in await refused(verifier, token)
    clock.now = NOW + 30
    assert (await within(verifier.verify(token))).subject == "user-1"


async def test_leeway_is_honoured_for_exp_and_nbf() -> None:
    clock = Clock()
    verifier = JWTVerifier(secret=SECRET, leeway=30, clock=clock)
    expiring = sign(SECRET, "HS256", claims(exp=int(NOW)))
    early = sign(SECRET, "HS256", claims(nbf=int(NOW) + 30))

    assert (await within(verifier.verify(expiring))).expires_at == NOW
    assert (await within(verifier.verify(early))).subject == "user-1"
    clock.now = NOW + 30
    await refused(verifier, expiring, "token_expired")
    clock.now = NOW - 1
    await refused(verifier, early)


async def test_iat_is_optional_and_not_compared_with_the_clock() -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())

    future_iat = sign(SECRET, "HS256", claims(iat=int(NOW) + 3600))
    no_iat = sign(SECRET, "HS256", claims(iat=None))

    assert (await within(verifier.verify(future_iat))).subject == "user-1"
    assert (await within(verifier.verify(no_iat))).subject == "user-1"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["1700000300", True, [1], {"a": 1}, 10**400])
async def test_time_claims_must_be_numbers(claim: str, value: Any) -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())

    token = sign(SECRET, "HS256", claims(**{claim: value}))

    assert claim in await refused(verifier, token)


async def test_a_non_string_subject_is_refused() -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())

    await refused(verifier, sign(SECRET, "HS256", claims(sub=42)))


async def test_issuer_is_checked_when_configured() -> None:
    verifier = JWTVerifier(secret=SECRET, issuer=ISSUER, clock=Clock())

    assert (await within(verifier.verify(sign(SECRET, "HS256", claims(iss=ISSUER))))).subject
    assert "issuer" in await refused(verifier, sign(SECRET, "HS256", claims(iss="https://evil")))
    assert "iss" in await refused(verifier, sign(SECRET, "HS256", claims()))


async def test_audience_is_checked_when_configured() -> None:
    verifier = JWTVerifier(secret=SECRET, audience=AUDIENCE, clock=Clock())

    assert (await within(verifier.verify(sign(SECRET, "HS256", claims(aud=AUDIENCE))))).subject
    listed = claims(aud=["other", AUDIENCE])
    assert (await within(verifier.verify(sign(SECRET, "HS256", listed)))).subject
    assert "audience" in await refused(verifier, sign(SECRET, "HS256", claims(aud="other")))
    assert "aud" in await refused(verifier, sign(SECRET, "HS256", claims()))


async def test_iss_and_aud_are_not_checked_when_not_configured() -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())

    token = sign(SECRET, "HS256", claims(iss="anyone", aud="anything"))

    assert (await within(verifier.verify(token))).claims["aud"] == "anything"


# --- malformed tokens ------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b.c",
        "....",
        "eyJhbGciOiJIUzI1NiJ9",
        "eyJhbGciOiJIUzI1NiJ9.e30",
        "eyJhbGciOiJIUzI1NiJ9.!!!.abc",
        "bm90IGpzb24.e30.abc",  # header is not JSON
        "WzFd.e30.abc",  # header is a JSON array
        "eyJhbGciOiJIUzI1NiIsImtpZCI6MX0.e30.abc",  # kid is not a string
        "eyJhbGciOiJIUzI1NiIsImNyaXQiOlsieCJdLCJ4IjoxfQ.e30.abc",  # unknown crit
        "ünïcödé.ünïcödé.ünïcödé",
    ],
)
async def test_garbage_tokens_are_unauthorized(token: str) -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())

    await refused(verifier, token)


async def test_a_payload_that_is_not_an_object_is_refused() -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())
    header = b64(json.dumps({"alg": "HS256"}).encode())
    signing_input = f"{header}.{b64(b'[1, 2]')}"
    mac = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()

    assert "malformed" in await refused(verifier, f"{signing_input}.{b64(mac)}")


async def test_a_tampered_payload_is_refused() -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())
    header, _, signature = sign(SECRET, "HS256").split(".")
    payload = b64(json.dumps(claims(sub="admin")).encode())

    assert "signature" in await refused(verifier, f"{header}.{payload}.{signature}")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(),
        st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-_="), max_size=4).map(
            ".".join
        ),
        st.builds(
            lambda header, payload: forge(header, payload, sign_with=b"k" * 64),
            st.dictionaries(
                st.sampled_from(["alg", "kid", "typ", "crit", "b64"]),
                st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
            ),
            st.dictionaries(
                st.sampled_from(["exp", "nbf", "iat", "sub", "iss", "aud"]),
                st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()),
            ),
        ),
    )
)
def test_any_input_is_verified_or_refused_with_authentication_error(token: str) -> None:
    verifier = JWTVerifier(secret=SECRET, clock=Clock())

    async def attempt() -> str:
        try:
            await asyncio.wait_for(verifier.verify(token), 5)
        except AuthenticationError as exc:
            return exc.code
        return "verified"

    assert asyncio.run(attempt()) in ("unauthorized", "token_expired", "verified")


# --- JWKS ------------------------------------------------------------------------------


async def test_jwks_keys_are_selected_by_kid(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    fake = FakeJWKS(jwk(rsa_key, kid="rsa-1", use="sig"), jwk(ec_key, kid="ec-1", alg="ES256"))
    verifier = jwks_verifier(fake)

    rs = await within(verifier.verify(sign(rsa_key, "RS256", kid="rsa-1")))
    es = await within(verifier.verify(sign(ec_key, "ES256", kid="ec-1")))

    assert rs.subject == es.subject == "user-1"
    assert fake.calls == 1
    assert fake.urls == [JWKS_URL]
    # The right algorithm under the wrong kid does not verify.
    assert "kid" in await refused(verifier, sign(ec_key, "ES256", kid="rsa-1"))
    assert fake.calls == 1  # a known kid triggers no refetch


async def test_jwks_two_rsa_keys_by_kid(
    rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    fake = FakeJWKS(jwk(rsa_key, kid="a", alg="RS256"), jwk(rsa_key_2, kid="b", alg="RS256"))
    verifier = jwks_verifier(fake)

    assert (await within(verifier.verify(sign(rsa_key_2, "RS256", kid="b")))).subject
    assert (await within(verifier.verify(sign(rsa_key, "RS256", kid="a")))).subject
    assert "signature" in await refused(verifier, sign(rsa_key, "RS256", kid="b"))


async def test_a_token_without_kid_tries_every_fitting_jwks_key(
    rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    fake = FakeJWKS(jwk(rsa_key, kid="a"), jwk(rsa_key_2, kid="b"))
    verifier = jwks_verifier(fake)

    assert (await within(verifier.verify(sign(rsa_key_2, "RS256")))).subject == "user-1"


async def test_unknown_kid_refetches_once_and_finds_a_rotated_key(
    rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    clock = Clock()
    fake = FakeJWKS(jwk(rsa_key, kid="old"))
    verifier = jwks_verifier(fake, clock)
    assert (await within(verifier.verify(sign(rsa_key, "RS256", kid="old")))).subject
    assert fake.calls == 1

    clock.now += 60  # well inside the cache lifetime
    fake.keys = [jwk(rsa_key, kid="old"), jwk(rsa_key_2, kid="new")]
    identity = await within(verifier.verify(sign(rsa_key_2, "RS256", kid="new")))

    assert identity.subject == "user-1"
    assert fake.calls == 2
    assert (await within(verifier.verify(sign(rsa_key_2, "RS256", kid="new")))).subject
    assert fake.calls == 2


async def test_unknown_kid_refetches_are_rate_limited(
    rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    clock = Clock()
    fake = FakeJWKS(jwk(rsa_key, kid="known"))
    verifier = jwks_verifier(fake, clock)
    await within(verifier.verify(sign(rsa_key, "RS256", kid="known")))
    clock.now += 60

    # A flood of random kids: one refetch, then nothing until the interval passes.
    for n in range(50):
        message = await refused(verifier, sign(rsa_key_2, "RS256", kid=f"random-{n}"))
        assert "kid" in message
        clock.now += 0.1
    assert fake.calls == 2

    clock.now += 10
    fake.keys.append(jwk(rsa_key_2, kid="random-0"))
    assert (await within(verifier.verify(sign(rsa_key_2, "RS256", kid="random-0")))).subject
    assert fake.calls == 3


async def test_unknown_kid_right_after_the_first_fetch_waits_for_the_interval(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    clock = Clock()
    fake = FakeJWKS(jwk(rsa_key, kid="a"))
    verifier = jwks_verifier(fake, clock, jwks_refetch_interval=10)

    await refused(verifier, sign(rsa_key, "RS256", kid="b"))
    assert fake.calls == 1
    clock.now += 10
    await refused(verifier, sign(rsa_key, "RS256", kid="b"))
    assert fake.calls == 2


async def test_jwks_is_cached_for_jwks_cache_seconds(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = Clock()
    fake = FakeJWKS(jwk(rsa_key, kid="a"))
    verifier = jwks_verifier(fake, clock, jwks_cache_seconds=100)
    token = sign(rsa_key, "RS256", claims(exp=None), kid="a")

    await within(verifier.verify(token))
    clock.now += 99
    await within(verifier.verify(token))
    assert fake.calls == 1
    clock.now += 1
    await within(verifier.verify(token))
    assert fake.calls == 2


async def test_a_clock_going_backwards_expires_the_cache(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = Clock()
    fake = FakeJWKS(jwk(rsa_key, kid="a"))
    verifier = jwks_verifier(fake, clock, jwks_refetch_interval=0)
    token = sign(rsa_key, "RS256", claims(exp=None), kid="a")

    await within(verifier.verify(token))
    clock.now -= 3600
    await within(verifier.verify(token))

    assert fake.calls == 2


async def test_concurrent_verifications_share_one_fetch(rsa_key: rsa.RSAPrivateKey) -> None:
    fake = FakeJWKS(jwk(rsa_key, kid="a"))
    fake.gate = asyncio.Event()
    verifier = jwks_verifier(fake)
    token = sign(rsa_key, "RS256", kid="a")

    tasks = [asyncio.create_task(verifier.verify(token)) for _ in range(20)]
    await within(fake.started.wait())
    await asyncio.sleep(0)
    fake.gate.set()
    identities = await within(asyncio.gather(*tasks))

    assert {identity.subject for identity in identities} == {"user-1"}
    assert fake.calls == 1


async def test_a_cancelled_verification_does_not_cancel_the_shared_fetch(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    fake = FakeJWKS(jwk(rsa_key, kid="a"))
    fake.gate = asyncio.Event()
    verifier = jwks_verifier(fake)
    token = sign(rsa_key, "RS256", kid="a")

    first = asyncio.create_task(verifier.verify(token))
    await within(fake.started.wait())
    second = asyncio.create_task(verifier.verify(token))
    await asyncio.sleep(0)
    first.cancel()
    fake.gate.set()

    assert (await within(second)).subject == "user-1"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert fake.calls == 1


async def test_a_failed_fetch_is_unauthorized_and_logged(
    rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    fake = FakeJWKS(jwk(rsa_key, kid="a"))
    fake.error = OSError("connection refused")
    verifier = jwks_verifier(fake, clock)
    token = sign(rsa_key, "RS256", kid="a")

    with caplog.at_level(logging.ERROR, logger="broadcaster.auth.jwks"):
        message = await refused(verifier, token)

    assert "could not be fetched" in message
    [record] = [r for r in caplog.records if r.name == "broadcaster.auth.jwks"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert JWKS_URL in record.getMessage()

    # Retried no more than once per refetch interval.
    await refused(verifier, token)
    assert fake.calls == 1
    clock.now += 10
    fake.error = None
    assert (await within(verifier.verify(token))).subject == "user-1"
    assert fake.calls == 2


async def test_a_failed_refresh_keeps_the_keys_fetched_before(
    rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    fake = FakeJWKS(jwk(rsa_key, kid="a"))
    verifier = jwks_verifier(fake, clock, jwks_cache_seconds=60)
    token = sign(rsa_key, "RS256", claims(exp=None), kid="a")
    await within(verifier.verify(token))

    clock.now += 61
    fake.error = OSError("the IdP is down")
    with caplog.at_level(logging.WARNING, logger="broadcaster.auth.jwks"):
        assert (await within(verifier.verify(token))).subject == "user-1"

    assert fake.calls == 2
    [record] = [r for r in caplog.records if r.name == "broadcaster.auth.jwks"]
    assert record.levelno == logging.WARNING
    assert record.exc_info is not None


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"keys": {}}', b'{"nokeys": []}', b"\xff\xfe"],
)
async def test_an_invalid_jwks_document_is_a_failed_fetch(
    rsa_key: rsa.RSAPrivateKey, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeJWKS()
    fake.body = body
    verifier = jwks_verifier(fake)

    with caplog.at_level(logging.ERROR, logger="broadcaster.auth.jwks"):
        assert "could not be fetched" in await refused(verifier, sign(rsa_key, "RS256", kid="a"))
    assert any(r.exc_info for r in caplog.records)


async def test_a_hanging_fetch_times_out(rsa_key: rsa.RSAPrivateKey) -> None:
    fake = FakeJWKS(jwk(rsa_key, kid="a"))
    fake.gate = asyncio.Event()  # never set
    verifier = jwks_verifier(fake, jwks_timeout=0.05)

    assert "could not be fetched" in await refused(verifier, sign(rsa_key, "RS256", kid="a"))


async def test_unusable_jwks_entries_are_skipped(
    rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
    ed_key: ed25519.Ed25519PrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    secret_jwk = HMACAlgorithm.to_jwk(SECRET, as_dict=True) | {"kid": "oct"}
    fake = FakeJWKS(
        "not an object",
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        {"kty": "XYZ", "kid": "unknown-type"},
        secret_jwk,
        jwk(small, kid="small"),
        jwk(rsa_key, kid="enc", use="enc"),
        jwk(rsa_key, kid="no-verify", key_ops=["encrypt"]),
        jwk(rsa_key, kid="mismatch", alg="ES256"),
        jwk(ec_key, kid="ec", alg="ES256"),
        jwk(ed_key, kid="ed"),
    )
    verifier = jwks_verifier(fake)

    with caplog.at_level(logging.WARNING, logger="broadcaster.auth.jwks"):
        assert (await within(verifier.verify(sign(ec_key, "ES256", kid="ec")))).subject
        assert (await within(verifier.verify(sign(ed_key, "EdDSA", kid="ed")))).subject

    hs = forge({"alg": "HS256", "kid": "oct"}, claims(), sign_with=SECRET.encode())
    assert "'HS256'" in await refused(verifier, hs)
    with pytest.warns(jwt.InsecureKeyLengthWarning):
        await refused(verifier, sign(small, "RS256", kid="small"))
    for kid in ("enc", "no-verify", "mismatch"):
        await refused(verifier, sign(rsa_key, "RS256", kid=kid))
    skipped = " ".join(r.getMessage() for r in caplog.records)
    assert "oct" in skipped
    assert "1024-bit" in skipped


async def test_a_jwks_key_alg_binds_the_algorithm(rsa_key: rsa.RSAPrivateKey) -> None:
    fake = FakeJWKS(jwk(rsa_key, kid="a", alg="RS256"))
    verifier = jwks_verifier(fake, algorithms=["RS256", "PS256"])

    assert (await within(verifier.verify(sign(rsa_key, "RS256", kid="a")))).subject
    assert "kid" in await refused(verifier, sign(rsa_key, "PS256", kid="a"))


async def test_a_jwks_key_without_alg_takes_the_allow_list(rsa_key: rsa.RSAPrivateKey) -> None:
    fake = FakeJWKS(jwk(rsa_key, kid="a"))
    verifier = jwks_verifier(fake, algorithms=["PS256"])

    assert (await within(verifier.verify(sign(rsa_key, "PS256", kid="a")))).subject
    assert "not accepted" in await refused(verifier, sign(rsa_key, "RS256", kid="a"))


async def test_a_jwks_with_private_key_material_verifies_with_its_public_half(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    private_jwk = RSAAlgorithm.to_jwk(rsa_key, as_dict=True) | {"kid": "a"}
    del private_jwk["key_ops"]  # ["sign"]: such a key would be skipped as not for verifying
    verifier = jwks_verifier(FakeJWKS(private_jwk))

    assert (await within(verifier.verify(sign(rsa_key, "RS256", kid="a")))).subject


async def test_secret_and_jwks_together(
    rsa_key: rsa.RSAPrivateKey, rsa_key_2: rsa.RSAPrivateKey
) -> None:
    fake = FakeJWKS(jwk(rsa_key, kid="idp"))
    verifier = jwks_verifier(fake, secret=SECRET, public_key=pem(rsa_key_2))

    assert (await within(verifier.verify(sign(SECRET, "HS256")))).subject == "user-1"
    assert (await within(verifier.verify(sign(rsa_key_2, "RS256")))).subject == "user-1"
    assert fake.calls == 0  # our own keys need no fetch
    assert (await within(verifier.verify(sign(rsa_key, "RS256", kid="idp")))).subject
    assert fake.calls == 1
    assert verifier.algorithms >= {"HS256", "HS384", "HS512", "RS256", "ES256", "EdDSA"}


async def test_a_verifier_is_a_token_verifier() -> None:
    verifier: TokenVerifier = JWTVerifier(secret=SECRET, clock=Clock())

    assert (await within(verifier.verify(sign(SECRET, "HS256")))).subject == "user-1"


# --- configuration ---------------------------------------------------------------------


def configuration_error(match: str, **kwargs: Any) -> None:
    with pytest.raises(ConfigurationError, match=match) as caught:
        JWTVerifier(**kwargs)
    assert isinstance(caught.value, BroadcasterError)


def test_some_key_material_is_required() -> None:
    configuration_error("secret, a public key or a JWKS URL")
    configuration_error("secret, a public key or a JWKS URL", issuer=ISSUER)


def test_a_short_secret_is_refused() -> None:
    configuration_error("at least 32 bytes", secret="k" * 31)
    configuration_error("at least 32 bytes", secret="")


def test_an_allowed_hs_algorithm_needs_a_long_enough_secret() -> None:
    configuration_error(
        "HS512 needs a secret of at least 64 bytes", secret="k" * 32, algorithms=["HS512"]
    )


def test_a_json_web_key_is_not_a_secret(rsa_key: rsa.RSAPrivateKey) -> None:
    configuration_error("public key or a JWK", secret=json.dumps(jwk(rsa_key)))


def test_allowed_algorithms_need_key_material(rsa_key: rsa.RSAPrivateKey) -> None:
    configuration_error("HS256", public_key=pem(rsa_key), algorithms=["RS256", "HS256"])
    configuration_error("ES256", secret=SECRET, algorithms=["HS256", "ES256"])
    configuration_error(
        "no HS algorithm", secret=SECRET, public_key=pem(rsa_key), algorithms=["RS256"]
    )
    configuration_error("none of them allowed", public_key=pem(rsa_key), algorithms=["ES256"])
    configuration_error("no asymmetric", jwks_url=JWKS_URL, algorithms=["HS256"])


def test_unknown_algorithms_are_refused() -> None:
    configuration_error("unknown JWT algorithm 'HS1'", secret=SECRET, algorithms=["HS1"])
    configuration_error("must not be empty", secret=SECRET, algorithms=[])
    assert "none" not in [alg.lower() for alg in SUPPORTED_ALGORITHMS]


def test_bad_public_keys_are_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p192 = ec.generate_private_key(ec.SECP192R1()) if _has_p192() else None

    configuration_error("private key", public_key=private_pem)
    configuration_error("not a valid PEM public key", public_key="-----BEGIN PUBLIC KEY-----\nxx")
    configuration_error("not a valid PEM public key", public_key=SECRET)
    configuration_error("1024-bit", public_key=pem(small))
    if p192 is not None:
        configuration_error("must be RSA, EC", public_key=pem(p192))


def _has_p192() -> bool:
    try:
        ec.generate_private_key(ec.SECP192R1())
    except Exception:
        return False
    return True


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://idp.example/jwks", "idp.example/jwks", "https://", ""]
)
def test_the_jwks_url_must_be_http(url: str) -> None:
    configuration_error("http", jwks_url=url)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("leeway", -1),
        ("leeway", float("nan")),
        ("jwks_cache_seconds", 0),
        ("jwks_timeout", 0),
        ("jwks_timeout", float("inf")),
        ("jwks_refetch_interval", -1),
    ],
)
def test_numbers_are_validated(name: str, value: float) -> None:
    configuration_error(name, secret=SECRET, **{name: value})


def test_empty_issuer_or_audience_is_refused() -> None:
    configuration_error("issuer", secret=SECRET, issuer="")
    configuration_error("audience", secret=SECRET, audience="")


def test_read_key(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "key.pem"
    path.write_text(pem(rsa_key))

    assert read_key(f"@{path}") == pem(rsa_key)
    assert read_key(pem(rsa_key)) == pem(rsa_key)
    with pytest.raises(ConfigurationError, match="cannot read the key file"):
        read_key(f"@{tmp_path / 'missing.pem'}")


def test_authentication_error_carries_code_and_message() -> None:
    error = AuthenticationError("token_expired", "the token has expired")

    assert isinstance(error, BroadcasterError)
    assert (error.code, error.message, str(error)) == (
        "token_expired",
        "the token has expired",
        "the token has expired",
    )
