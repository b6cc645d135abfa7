"""Token verification with real PyJWT tokens: HS256, EdDSA, RS256, JWKS; every refusal."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from relay import cli
from relay.adapters.tokens import (
    KeyConfigError,
    TokenVerifier,
    issue_token,
    session_auth,
)
from relay.config.schema import AuthSection, RelayConfig
from relay.core.capabilities import TokenRejected

SECRET = b"s" * 40
CAPS = {"chat:*": ["subscribe", "publish", "history"]}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {"sub": "alice", "iat": now, "exp": now + 600, "caps": CAPS}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def pem_public(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    return str(path)


@pytest.fixture
def hs256(secret_file: str) -> TokenVerifier:
    return TokenVerifier.from_config(AuthSection(mode="token", secret_file=secret_file))


def rejected(verifier: TokenVerifier, token: object) -> TokenRejected:
    with pytest.raises(TokenRejected) as info:
        verifier.verify(token)
    return info.value


def test_hs256_token_gives_sub_exp_and_capabilities(hs256: TokenVerifier) -> None:
    body = claims(jti="t-1")
    creds = hs256.verify(jwt.encode(body, SECRET, algorithm="HS256"))
    assert (creds.sub, creds.exp, creds.iat, creds.jti) == (
        "alice",
        body["exp"],
        body["iat"],
        "t-1",
    )
    assert creds.capabilities.allows("publish", "chat:lobby")
    assert not creds.capabilities.allows("presence", "chat:lobby")
    assert not creds.capabilities.allows("subscribe", "news")


def test_secret_from_an_environment_variable() -> None:
    verifier = TokenVerifier.from_config(
        AuthSection(mode="token", secret_env="RELAY_TEST_SECRET"),
        env={"RELAY_TEST_SECRET": SECRET.decode()},
    )
    assert verifier.verify(jwt.encode(claims(), SECRET, algorithm="HS256")).sub == "alice"


def test_eddsa_public_key_file(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "ed.pem").write_bytes(pem_public(key))
    verifier = TokenVerifier.from_config(
        AuthSection(mode="token", public_key_files=(str(tmp_path / "ed.pem"),))
    )
    assert verifier.verify(jwt.encode(claims(), key, algorithm="EdDSA")).sub == "alice"
    other = ed25519.Ed25519PrivateKey.generate()
    assert rejected(verifier, jwt.encode(claims(), other, algorithm="EdDSA")).reason == (
        "bad signature"
    )


def test_rs256_public_key_file_and_no_algorithm_confusion(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "rsa.pem").write_bytes(pem_public(key))
    verifier = TokenVerifier.from_config(
        AuthSection(mode="token", public_key_files=(str(tmp_path / "rsa.pem"),))
    )
    assert verifier.verify(jwt.encode(claims(), key, algorithm="RS256")).sub == "alice"
    # HS256 signed with the public key as a secret: the algorithm comes from the key, not
    # the token, so it is refused.
    assert (
        "algorithm not accepted"
        in rejected(verifier, jwt.encode(claims(), SECRET, algorithm="HS256")).reason
    )


def test_jwks_file_picks_the_key_by_kid(tmp_path: Path) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = []
    for kid, key, alg in (("ed-1", ed, "EdDSA"), ("rs-1", rs, "RS256")):
        jwk = json.loads(jwt.PyJWK.from_dict(_jwk_of(key, alg)).Algorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": keys}))
    verifier = TokenVerifier.from_config(
        AuthSection(mode="token", jwks_file=str(tmp_path / "jwks.json"))
    )
    token = jwt.encode(claims(), ed, algorithm="EdDSA", headers={"kid": "ed-1"})
    assert verifier.verify(token).sub == "alice"
    token = jwt.encode(claims(sub="bob"), rs, algorithm="RS256", headers={"kid": "rs-1"})
    assert verifier.verify(token).sub == "bob"
    token = jwt.encode(claims(), ed, algorithm="EdDSA", headers={"kid": "ed-9"})
    assert rejected(verifier, token).reason == "unknown key id (kid)"


def _jwk_of(key: Any, alg: str) -> dict[str, Any]:
    algo = jwt.get_algorithm_by_name(alg)
    return dict(json.loads(algo.to_jwk(key.public_key())), alg=alg)


def test_expired_token(hs256: TokenVerifier) -> None:
    now = int(time.time())
    err = rejected(hs256, jwt.encode(claims(iat=now - 100, exp=now - 60), SECRET))
    assert (err.reason, err.expired) == ("token expired", True)


def test_leeway_accepts_a_token_expired_moments_ago(secret_file: str) -> None:
    verifier = TokenVerifier.from_config(
        AuthSection(mode="token", secret_file=secret_file, leeway_s=30.0)
    )
    now = int(time.time())
    assert verifier.verify(jwt.encode(claims(iat=now - 100, exp=now - 10), SECRET)).sub == "alice"


def test_bad_signature(hs256: TokenVerifier) -> None:
    err = rejected(hs256, jwt.encode(claims(), b"x" * 40, algorithm="HS256"))
    assert (err.reason, err.expired) == ("bad signature", False)


@pytest.mark.parametrize("claim", ["sub", "exp"])
def test_missing_required_claim(hs256: TokenVerifier, claim: str) -> None:
    assert rejected(hs256, jwt.encode(claims(**{claim: None}), SECRET)).reason == (
        f"missing claim {claim!r}"
    )


@pytest.mark.parametrize(
    ("caps", "reason"),
    [
        ({"a b": ["subscribe"]}, "bad capability: bad capability pattern 'a b'"),
        ({"chat:*": ["fly"]}, "bad capability: capability 'chat:*': unknown operation 'fly'"),
        (["chat:*"], "bad capability: capabilities must be an object"),
    ],
)
def test_bad_capability_claim(hs256: TokenVerifier, caps: object, reason: str) -> None:
    assert rejected(hs256, jwt.encode(claims(caps=caps), SECRET)).reason.startswith(reason)


def test_no_caps_claim_allows_nothing(hs256: TokenVerifier) -> None:
    body = claims()
    del body["caps"]
    assert not hs256.verify(jwt.encode(body, SECRET)).capabilities.allows("subscribe", "x")


@pytest.mark.parametrize("token", ["", "not-a-jwt", 42, None, "a.b.c", "x" * 9000])
def test_garbage_is_refused_without_echoing_it(hs256: TokenVerifier, token: object) -> None:
    err = rejected(hs256, token)
    assert str(token)[:20] not in err.reason or token in ("", None)


def test_reasons_never_contain_the_secret(hs256: TokenVerifier) -> None:
    for token in (
        jwt.encode(claims(), b"y" * 40),
        jwt.encode(claims(exp=1), SECRET),
        jwt.encode(claims(sub=None), SECRET),
    ):
        assert SECRET.decode() not in rejected(hs256, token).reason


def test_key_configuration_errors(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("tooshort")
    (tmp_path / "bad.pem").write_text("not a key")
    for auth, message in [
        (AuthSection(mode="token", secret_file=str(tmp_path / "none")), "cannot read"),
        (AuthSection(mode="token", secret_file=str(tmp_path / "short")), "at least 32 bytes"),
        (AuthSection(mode="token", secret_env="NOPE_NOT_SET"), "$NOPE_NOT_SET is not set"),
        (
            AuthSection(mode="token", public_key_files=(str(tmp_path / "bad.pem"),)),
            "not a PEM public key",
        ),
        (AuthSection(mode="token", jwks_file=str(tmp_path / "bad.pem")), "not a usable JWKS"),
    ]:
        with pytest.raises(KeyConfigError, match=message.replace("$", r"\$")):
            TokenVerifier.from_config(auth, env={})


def test_issue_token_round_trips(hs256: TokenVerifier) -> None:
    token = issue_token(SECRET, "carol", {"news": ["subscribe"]}, 60, jti="j1")
    creds = hs256.verify(token)
    assert (creds.sub, creds.jti) == ("carol", "j1")
    assert 55 <= creds.exp - time.time() <= 61
    assert creds.capabilities.allows("subscribe", "news")


def test_session_auth_by_mode(secret_file: str) -> None:
    anonymous = session_auth(AuthSection(anonymous=(("news:*", ("subscribe",)),)))
    assert anonymous.verify is None
    assert anonymous.anonymous.allows("subscribe", "news:x")
    assert not anonymous.anonymous.allows("publish", "news:x")
    token_mode = session_auth(AuthSection(mode="token", secret_file=secret_file))
    assert token_mode.required


# --- the CLI: `relaynet token issue`, and the start-up checks of `relaynet relay` -----------


def test_cli_token_issue_prints_a_token_relays_accept(
    secret_file: str, hs256: TokenVerifier, capsys: pytest.CaptureFixture[str]
) -> None:
    caps = '{"chat:*":["subscribe","publish"]}'
    argv = ["token", "issue", "--secret-file", secret_file, "--sub", "ops", "--caps", caps]
    assert cli.main([*argv, "--ttl", "15m"]) == 0
    creds = hs256.verify(capsys.readouterr().out.strip())
    assert creds.sub == "ops"
    assert 890 <= creds.exp - time.time() <= 901
    assert creds.capabilities.allows("publish", "chat:x")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--caps", '{"chat:*":["fly"]}'], "unknown operation 'fly'"),
        (["--caps", "not json"], "Expecting value"),
        (["--caps", "{}", "--ttl", "soon"], "bad duration 'soon'"),
    ],
)
def test_cli_token_issue_refuses_bad_input(
    secret_file: str, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["token", "issue", "--secret-file", secret_file, "--sub", "ops"]
    if "--caps" not in extra[:1]:
        argv += ["--caps", "{}"]
    assert cli.main([*argv, *extra]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert message in out.err


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("::", False),
        ("relay.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert cli._is_loopback(host) is loopback


def _relay_cfg(host: str, auth: AuthSection) -> RelayConfig:
    return RelayConfig.model_validate(
        {"region": {"name": "us-east"}, "relay": {"id": "r1", "host": host}}
    ).model_copy(update={"auth": auth})


def test_anonymous_relay_on_a_public_address_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="relaynet"):
        assert cli._auth_usable("f.toml", _relay_cfg("0.0.0.0", AuthSection()))
        assert cli._auth_usable("f.toml", _relay_cfg("127.0.0.1", AuthSection()))
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "ANONYMOUS RELAY ON A NON-LOOPBACK ADDRESS (0.0.0.0)" in record.getMessage()


def test_token_relay_with_unusable_keys_does_not_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    missing = AuthSection(mode="token", secret_file=str(tmp_path / "none"))
    assert not cli._auth_usable("f.toml", _relay_cfg("0.0.0.0", missing))
    assert "f.toml: auth.secret_file: cannot read" in capsys.readouterr().err
    assert not caplog.records  # token mode: no anonymous warning
