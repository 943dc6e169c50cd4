"""Label Studio tokens at rest: sealed with Fernet (AES-128-CBC and HMAC-SHA256, from the
``cryptography`` package) under ``CANDOR_LABELSTUDIO_TOKEN_KEYS`` when it is set.

A sealed token is stored as ``fernet:<token>``; without keys a token is stored as it was given
(and read back as it is). The first key seals; every key unseals, so keys rotate by putting a new
one first and running ``candor labelstudio rekey``, which seals every stored token with it.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.settings import get_settings

PREFIX = "fernet:"


class TokenError(Exception):
    """A stored token that cannot be read; the message says why in plain words."""


def _fernet() -> MultiFernet | None:
    keys = get_settings().labelstudio_token_keys
    return MultiFernet([Fernet(k) for k in keys]) if keys else None


def seal(token: str) -> str:
    """The token as stored: sealed under the first key, or as it is without keys."""
    f = _fernet()
    return token if f is None else PREFIX + f.encrypt(token.encode()).decode()


def unseal(stored: str) -> str:
    """The token a stored value holds; TokenError when it is sealed and no key opens it."""
    if not stored.startswith(PREFIX):
        return stored
    f = _fernet()
    if f is None:
        raise TokenError("the connection's token is encrypted and CANDOR_LABELSTUDIO_TOKEN_KEYS is not set")
    try:
        return f.decrypt(stored[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        raise TokenError(
            "the connection's token was encrypted with a key CANDOR_LABELSTUDIO_TOKEN_KEYS no longer holds; "
            "save the connection again with its token"
        ) from None


def rekey(session: Session) -> tuple[int, int]:
    """Seal every stored token under the first key (plain ones too): (tokens sealed, tokens that no
    key opens, left as they are)."""
    from app.labelstudio.models import LabelStudioConnection

    if _fernet() is None:
        raise TokenError("CANDOR_LABELSTUDIO_TOKEN_KEYS is not set: there is no key to seal the tokens with")
    sealed = unreadable = 0
    for conn in session.scalars(select(LabelStudioConnection).where(LabelStudioConnection.token.is_not(None))):
        try:
            conn.token = seal(unseal(conn.token))
            sealed += 1
        except TokenError:
            unreadable += 1
    session.flush()
    return sealed, unreadable
