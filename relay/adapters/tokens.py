"""Client tokens: JWTs verified with PyJWT against the keys of ``[auth]``.

A relay verifies, it never signs (``issue_token`` is for operators and tests):

* HS256 with a shared secret, read from a file (``secret_file``) or an environment
  variable (``secret_env``) -- never inline in the config, so configs can be shared;
* EdDSA (Ed25519) or RS256 with public keys from PEM files (``public_key_files``) or
  a JWKS file (``jwks_file``; a token names its key by ``kid``).

The algorithm is fixed by the key, never taken from the token. Required claims:
``sub`` (string) and ``exp``; ``iat``, ``nbf`` and ``jti`` are checked if present;
``caps`` ({pattern: [operations]}, see ``relay.core.capabilities``) says what the
client may do (absent: nothing). Every failure is a ``TokenRejected`` whose
``reason`` is short, stable and free of secrets (it goes into error frames).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from relay.config.schema import AuthSection
from relay.core.capabilities import (
    CapabilityError,
    Credentials,
    TokenRejected,
    parse_capabilities,
)
from relay.protocol.session import SessionAuth

CAPS_CLAIM: Final = "caps"
MAX_TOKEN_CHARS: Final = 8192
MIN_SECRET_BYTES: Final = 32


class KeyConfigError(Exception):
    """The configured key material cannot be used (missing file, bad PEM, short secret)."""


@dataclass(frozen=True)
class _Key:
    algorithm: str
    key: Any
    kid: str | None = None


class TokenVerifier:
    def __init__(self, keys: list[_Key], *, leeway_s: float = 5.0) -> None:
        if not keys:
            raise KeyConfigError("no keys to verify tokens with")
        self._keys = keys
        self._algorithms = sorted({k.algorithm for k in keys})
        self.leeway_s = leeway_s

    @classmethod
    def from_config(cls, auth: AuthSection, env: Mapping[str, str] | None = None) -> TokenVerifier:
        env = os.environ if env is None else env
        keys: list[_Key] = []
        if auth.secret_file is not None:
            try:
                secret = Path(auth.secret_file).read_bytes().strip()
            except OSError as exc:
                raise KeyConfigError(f"auth.secret_file: cannot read: {exc.strerror}") from None
            keys.append(_Key("HS256", _check_secret(secret, "auth.secret_file")))
        if auth.secret_env is not None:
            value = env.get(auth.secret_env)
            if value is None:
                raise KeyConfigError(f"auth.secret_env: ${auth.secret_env} is not set")
            keys.append(_Key("HS256", _check_secret(value.strip().encode(), "auth.secret_env")))
        for path in auth.public_key_files:
            keys.append(_public_key(path))
        if auth.jwks_file is not None:
            keys.extend(_jwks(auth.jwks_file))
        return cls(keys, leeway_s=auth.leeway_s)

    def verify(self, token: object) -> Credentials:
        """The token's claims, or ``TokenRejected``."""
        if not isinstance(token, str) or not token:
            raise TokenRejected("token must be a non-empty string")
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenRejected(f"token longer than {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRejected("malformed token") from None
        alg, kid = header.get("alg"), header.get("kid")
        candidates = [
            k
            for k in self._keys
            if k.algorithm == alg and (kid is None or k.kid is None or k.kid == kid)
        ]
        if not candidates:
            if any(k.algorithm == alg for k in self._keys):
                raise TokenRejected("unknown key id (kid)")
            raise TokenRejected(f"algorithm not accepted (accepted: {', '.join(self._algorithms)})")
        claims: dict[str, Any] | None = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[key.algorithm],
                    leeway=self.leeway_s,
                    options={"require": ["exp", "sub"], "verify_aud": False},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise TokenRejected("token expired", expired=True) from None
            except jwt.ImmatureSignatureError:
                raise TokenRejected("token not yet valid (nbf/iat in the future)") from None
            except jwt.MissingRequiredClaimError as exc:
                raise TokenRejected(f"missing claim {exc.claim!r}") from None
            except jwt.InvalidTokenError as exc:
                raise TokenRejected(_invalid(exc)) from None
        if claims is None:
            raise TokenRejected("bad signature")
        return _claims(claims)


def _invalid(exc: jwt.InvalidTokenError) -> str:
    if isinstance(exc, jwt.DecodeError):
        return "malformed token"
    # PyJWT's messages name the claim and never include the key.
    text = str(exc)
    return f"invalid token: {text[:120]}" if text else "invalid token"


def _claims(claims: dict[str, Any]) -> Credentials:
    sub, exp, iat, jti = claims["sub"], claims["exp"], claims.get("iat"), claims.get("jti")
    if not isinstance(sub, str) or not sub:
        raise TokenRejected("claim 'sub' must be a non-empty string")
    if jti is not None and not isinstance(jti, str):
        raise TokenRejected("claim 'jti' must be a string")
    try:
        caps = parse_capabilities(claims.get(CAPS_CLAIM, {}))
    except CapabilityError as exc:
        raise TokenRejected(f"bad capability: {exc}") from None
    return Credentials(
        sub=sub,
        exp=exp,  # an integer (PyJWT checks): sent back to the client as it came
        capabilities=caps,
        iat=None if iat is None else float(iat),
        jti=jti,
    )


def _check_secret(secret: bytes, field: str) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyConfigError(f"{field}: the HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


def _public_key(path: str) -> _Key:
    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise KeyConfigError(f"auth.public_key_files: {path}: {exc.strerror}") from None
    except ValueError:
        raise KeyConfigError(f"auth.public_key_files: {path}: not a PEM public key") from None
    if isinstance(key, Ed25519PublicKey):
        return _Key("EdDSA", key)
    if isinstance(key, RSAPublicKey):
        return _Key("RS256", key)
    raise KeyConfigError(f"auth.public_key_files: {path}: only Ed25519 and RSA keys are accepted")


def _jwks(path: str) -> list[_Key]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        keyset = jwt.PyJWKSet.from_dict(data)
    except OSError as exc:
        raise KeyConfigError(f"auth.jwks_file: {path}: {exc.strerror}") from None
    except (ValueError, jwt.PyJWTError) as exc:
        raise KeyConfigError(f"auth.jwks_file: {path}: not a usable JWKS: {exc}") from None
    keys = []
    for jwk in keyset.keys:
        if jwk.algorithm_name not in ("EdDSA", "RS256"):
            raise KeyConfigError(
                f"auth.jwks_file: {path}: key {jwk.key_id!r} is {jwk.algorithm_name}; "
                "only EdDSA and RS256 public keys are accepted"
            )
        keys.append(_Key(jwk.algorithm_name, jwk.key, jwk.key_id))
    return keys


def issue_token(
    secret: bytes,
    sub: str,
    caps: Mapping[str, list[str]],
    ttl_s: float,
    *,
    jti: str | None = None,
    now: float | None = None,
) -> str:
    """An HS256 token (for operators and tests; relays only verify)."""
    parse_capabilities(caps)  # refuse to sign what no relay would accept
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": sub,
        "iat": issued,
        "exp": issued + max(1, round(ttl_s)),
        CAPS_CLAIM: dict(caps),
    }
    if jti is not None:
        claims["jti"] = jti
    return jwt.encode(claims, _check_secret(secret, "secret"), algorithm="HS256")


def session_auth(
    auth: AuthSection,
    env: Mapping[str, str] | None = None,
    revoked: Callable[[Credentials], bool] | None = None,
) -> SessionAuth:
    """What every session of a relay with this ``[auth]`` needs (reads the key files);
    ``revoked``: whether a verified token has been revoked since."""
    try:
        anonymous = parse_capabilities({p: list(ops) for p, ops in auth.anonymous})
    except CapabilityError as exc:
        raise KeyConfigError(f"auth.anonymous: {exc}") from None
    if auth.mode == "anonymous":
        return SessionAuth(None, anonymous)
    if auth.mode == "hook":  # the backend's connect hook says who clients are
        return SessionAuth(None, anonymous, external=True, expiry_warning_s=auth.expiry_warning_s)
    return SessionAuth(
        TokenVerifier.from_config(auth, env).verify,
        anonymous,
        revoked=revoked,
        expiry_warning_s=auth.expiry_warning_s,
    )
