"""API keys, IAM tokens and instances.

The IAM route trades an accepted API key for a signed, expiring JWT (HS256 with the emulator's
secret; the official SDK decodes it without checking the signature but needs ``exp``/``iat``).
Runtime routes accept ``Authorization: Bearer <token>`` (or the client's ``apikey <key>``
fallback) and the ``Service-CRN`` header must name an instance the key may use. Anything else is
401, with no hint of which part was wrong.

A token names its key by ``sub``, an HMAC of the key under the token secret: every request
looks that subject up among the keys configured *now*, so removing a key from the configuration
revokes its tokens at once, and the instances a token may act for are those its key may use now.
The token holds nothing a holder could test guesses of the key against offline (an unkeyed hash
would allow that), and with the same secret (kept in the data directory) and keys, tokens
survive a restart.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

import jwt

from .config import ApiKey, Config

__all__ = ["AuthError", "Principal", "authenticate", "issue_token"]

_ISSUER = "aioruntime-emulator"


class AuthError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    instances: tuple[str, ...]


def _subject(secret: str, key: str) -> str:
    """The token subject that names ``key``: keyed by the token secret, so it cannot be
    brute-forced back to a weak key without the secret."""
    message = b"aioruntime-emulator token subject\0" + key.encode("utf-8", "surrogatepass")
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


@functools.lru_cache(maxsize=16)
def _subjects(
    secret: str, keys: tuple[ApiKey, ...], instances: tuple[str, ...]
) -> dict[str, tuple[str, ...]]:
    """Subject → instances, for the keys configured now (computed once per configuration)."""
    # reversed: the first of two entries for one key wins, as in Config.instances_for_key
    return {_subject(secret, k.key): k.instances or instances for k in reversed(keys)}


@functools.lru_cache(maxsize=4096)
def _verified(token: str, secret: str) -> dict[str, Any]:
    """The claims of a token whose signature, issuer and claims PyJWT has checked, once per
    token: a client sends the same token with every request for an hour, and decoding it
    (base64, JSON, an HMAC) was the largest cost of authenticating one. A refused token raises
    and so is not cached. The caller checks ``exp`` on every use, and the subject against the
    keys configured now (revocation)."""
    claims: dict[str, Any] = jwt.decode(
        token,
        secret,
        algorithms=["HS256"],
        issuer=_ISSUER,
        options={"require": ["exp", "iat", "sub"]},
    )
    return claims


def issue_token(config: Config, api_key: str) -> tuple[str, int, int]:
    """(token, iat, exp) for an accepted key; AuthError otherwise."""
    if config.instances_for_key(api_key) is None:
        raise AuthError("Provided API key could not be found.")
    iat = int(time.time())
    exp = iat + config.token_ttl_s
    claims = {"iss": _ISSUER, "sub": _subject(config.token_secret, api_key), "iat": iat, "exp": exp}
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
            claims = _verified(credential, config.token_secret)
        except (jwt.PyJWTError, UnicodeError) as exc:  # UnicodeError: undecodable header bytes
            raise AuthError(f"invalid token: {exc}") from None
        if claims["exp"] <= time.time():  # as PyJWT checks it, on every use of a cached token
            raise AuthError("invalid token: Signature has expired")
        subjects = _subjects(config.token_secret, config.api_keys, config.instances)
        instances = subjects.get(claims["sub"]) if isinstance(claims["sub"], str) else None
        if instances is None:  # its key has been removed from the configuration since
            raise AuthError("the token's API key is no longer accepted")
        return Principal(claims["sub"], instances)
    if scheme == "apikey":
        instances = config.instances_for_key(credential)
        if instances is None:
            raise AuthError("invalid API key")
        return Principal(_subject(config.token_secret, credential), instances)
    raise AuthError("unsupported Authorization scheme")
