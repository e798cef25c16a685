"""The shape of API keys and how their secrets are hashed and checked.

A key reads `vsr_live_<8 characters>_<secret>`. The prefix is public (it names the key in logs, the console
and audit events); the secret is at least 32 random bytes and is stored only as HMAC-SHA256 under a
server-side pepper (`API_KEY_PEPPER`), so a leaked database alone does not yield usable keys.
"""

import hashlib
import hmac
import re
import secrets
import string

from django.conf import settings

PREFIX_START = "vsr_live_"
PREFIX_ALPHABET = string.ascii_lowercase + string.digits
PREFIX_RANDOM_LENGTH = 8
SECRET_BYTES = 32

_KEY_SHAPE = re.compile(
    rf"^({re.escape(PREFIX_START)}[a-z0-9]{{{PREFIX_RANDOM_LENGTH}}})_([A-Za-z0-9_-]{{43,}})$"
)


def new_prefix() -> str:
    return PREFIX_START + "".join(secrets.choice(PREFIX_ALPHABET) for _ in range(PREFIX_RANDOM_LENGTH))


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    return hmac.new(settings.API_KEY_PEPPER.encode(), secret.encode(), hashlib.sha256).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    # Constant time, so response timing does not reveal how much of a guessed secret was right.
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def split_key(raw_key: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed key, else None."""
    match = _KEY_SHAPE.match(raw_key)
    return (match.group(1), match.group(2)) if match else None
