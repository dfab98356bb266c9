"""The app's user accounts: a JSON file of scrypt password hashes that `python launch.py --add-user NAME` writes.

`{"users": {name: {"hash": "scrypt$<n>$<r>$<p>$<salt hex>$<key hex>", "created": iso time}}}`, written atomically
with mode 0600. Passwords are never stored; checking one costs one scrypt derivation (about 50 ms).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path

from multimask.io import DatasetError, atomic_write_json, read_json

USERS_FILE = ".users.json"  # default place: in the runs root, which is never served
USER_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MIN_PASSWORD = 8
SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # OpenSSL's scrypt; 16 MB of memory per check


class UsersError(ValueError):
    """A user name, password or users file that cannot be used; the message says which."""


def hash_password(password: str) -> str:
    """The stored form of `password`: scrypt with a random salt and its parameters."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, **SCRYPT)
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${salt.hex()}${key.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a `hash_password` result (constant-time compare; False for a malformed hash)."""
    try:
        kind, n, r, p, salt, key = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), key)


class UserFile:
    """The users file at `path` (it need not exist until a user is added)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _read(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            doc = read_json(self.path)
        except DatasetError as e:
            raise UsersError(str(e)) from None
        users = doc.get("users") if isinstance(doc, dict) else None
        if not isinstance(users, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("hash"), str) for v in users.values()
        ):
            raise UsersError(f"{self.path}: needs a 'users' object of {{name: {{'hash': ...}}}}")
        return users

    def names(self) -> list[str]:
        """The user names, sorted."""
        return sorted(self._read())

    def add(self, name: str, password: str) -> bool:
        """Add `name` or change its password; True when the user is new. UsersError for a bad name or password."""
        if not isinstance(name, str) or not USER_NAME_RE.fullmatch(name):
            raise UsersError(f"invalid user name {name!r}: 1 to 64 letters, digits or '_.@-'")
        if len(password) < MIN_PASSWORD:
            raise UsersError(f"the password must have at least {MIN_PASSWORD} characters")
        users = self._read()
        new = name not in users
        users[name] = {
            "hash": hash_password(password),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(self.path, {"users": users}, indent=2)  # a new file is created with mode 0600
        return new

    def remove(self, name: str) -> None:
        """Remove `name`; UsersError when there is no such user."""
        users = self._read()
        if name not in users:
            raise UsersError(f"there is no user {name!r} in {self.path} (users: {sorted(users)})")
        del users[name]
        atomic_write_json(self.path, {"users": users}, indent=2)

    def check(self, name: str, password: str) -> bool:
        """Whether `name` exists with this password. The file is read at every check, so users added or removed
        while the app runs take effect at their next login."""
        try:
            user = self._read().get(name)
        except UsersError:
            return False
        if user is None:  # as slow as a wrong password, so timing does not tell which names exist
            verify_password(password, _UNKNOWN_USER_HASH)
            return False
        return verify_password(password, user["hash"])


_UNKNOWN_USER_HASH = hash_password(secrets.token_hex(16))
