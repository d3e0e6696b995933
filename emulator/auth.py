"""API keys, IAM tokens and instances.

The IAM route trades an accepted API key for a signed, expiring JWT (HS256 with the emulator's
secret; the official SDK decodes it without checking the signature but needs ``exp``/``iat``).
Runtime routes accept ``Authorization: Bearer <token>`` (or the client's ``apikey <key>``
fallback) and the ``Service-CRN`` header must name an instance the key may use. Anything else is
401, with no hint of which part was wrong.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import jwt

from .config import Config

__all__ = ["AuthError", "Principal", "authenticate", "issue_token"]

_ISSUER = "aioruntime-emulator"


class AuthError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    instances: tuple[str, ...]


def _key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def issue_token(config: Config, api_key: str) -> tuple[str, int, int]:
    """(token, iat, exp) for an accepted key; AuthError otherwise."""
    instances = config.instances_for_key(api_key)
    if instances is None:
        raise AuthError("Provided API key could not be found.")
    iat = int(time.time())
    exp = iat + config.token_ttl_s
    claims = {
        "iss": _ISSUER,
        "sub": _key_id(api_key),
        "iat": iat,
        "exp": exp,
        "instances": list(instances),
    }
    return jwt.encode(claims, config.token_secret, algorithm="HS256"), iat, exp


def authenticate(config: Config, authorization: str | None) -> Principal:
    """The principal behind an ``Authorization`` header; AuthError when it proves nothing."""
    if not authorization:
        raise AuthError("missing Authorization header")
    scheme, _, credential = authorization.partition(" ")
    scheme = scheme.lower()
    credential = credential.strip()
    if scheme == "bearer":
        try:
            claims = jwt.decode(
                credential,
                config.token_secret,
                algorithms=["HS256"],
                issuer=_ISSUER,
                options={"require": ["exp", "iat", "sub"]},
            )
        except (jwt.PyJWTError, UnicodeError) as exc:  # UnicodeError: undecodable header bytes
            raise AuthError(f"invalid token: {exc}") from None
        # The key may have been removed from the configuration since the token was issued.
        allowed = set(config.instances)
        return Principal(
            claims["sub"], tuple(i for i in claims.get("instances", []) if i in allowed)
        )
    if scheme == "apikey":
        instances = config.instances_for_key(credential)
        if instances is None:
            raise AuthError("invalid API key")
        return Principal(_key_id(credential), instances)
    raise AuthError("unsupported Authorization scheme")
