"""One-time passwords, both roles: openconnect's soft token and ocserv's OTP file.

Client side: ``parse_token_secret`` reads openconnect's ``--token-secret``
(``oath.c`` ``set_oath_mode``), ``HotpCodes`` and ``TotpCodes`` make the
codes (RFC 4226, RFC 6238).  Server side: ``parse_otp_users_file`` reads the
liboath UsersFile that ocserv's ``plain[otp=FILE]`` names, and
``OtpVerifier`` checks codes as ``oath_authenticate_usersfile`` does with
ocserv's window (``HOTP_WINDOW`` 20, ``src/auth/plain.c``).

The HMAC and the dynamic truncation are ``cryptography``'s.  Sans-IO: the
clock is the ``now`` argument.  Keys, PINs and codes never appear in a repr
or an exception message.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.twofactor.hotp import HOTP
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from loadgen.proto.errors import LocalProtocolError

__all__ = [
    "HOTP_WINDOW",
    "HotpCodes",
    "OtpUser",
    "OtpVerifier",
    "TokenMode",
    "TokenSecret",
    "TotpCodes",
    "parse_otp_users_file",
    "parse_token_secret",
]

#: ocserv's look-ahead window (``src/auth/plain.c``): HOTP counters
#: ``counter .. counter+20``, TOTP steps ``now-20 .. now+20`` (liboath searches both ways)
HOTP_WINDOW: Final = 20
#: liboath reads at most 32 key bytes (``char secret[32]`` in ``usersfile.c``)
_MAX_FILE_KEY_BYTES: Final = 32
#: bounds on what we accept from a command line or a file
_MAX_SECRET_CHARS: Final = 4096
_MAX_FILE_CHARS: Final = 1 << 20
_MAX_FILE_USERS: Final = 100_000
#: counters stay well inside the 8-byte moving factor
_MAX_COUNTER: Final = (1 << 63) - 1
#: a code longer than this is never compared in full
_MAX_CODE_CHARS: Final = 16

_ALGORITHMS: Final[Mapping[str, type[hashes.SHA1 | hashes.SHA256 | hashes.SHA512]]] = (
    MappingProxyType({"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha512": hashes.SHA512})
)
#: ``usersfile.c`` ``parse_type``: type -> (TOTP step seconds or 0, digits)
_TOKEN_TYPES: Final[Mapping[str, tuple[int, int]]] = MappingProxyType(
    {
        "HOTP": (0, 6),
        "HOTP/E": (0, 6),
        "HOTP/E/6": (0, 6),
        "HOTP/E/7": (0, 7),
        "HOTP/E/8": (0, 8),
        "HOTP/T30": (30, 6),
        "HOTP/T30/6": (30, 6),
        "HOTP/T30/7": (30, 7),
        "HOTP/T30/8": (30, 8),
        "HOTP/T60": (60, 6),
        "HOTP/T60/6": (60, 6),
        "HOTP/T60/7": (60, 7),
        "HOTP/T60/8": (60, 8),
    }
)
_HEX: Final = re.compile(r"(?:[0-9A-Fa-f]{2})+\Z")
_DECIMAL: Final = re.compile(r"[0-9]{1,19}\Z")
#: liboath's TIME_FORMAT_STRING ``%Y-%m-%dT%H:%M:%SL``
_TIMESTAMP: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}L\Z")
_C_SPACE: Final = " \t\n\v\f\r"


class TokenMode(enum.StrEnum):
    """openconnect's ``--token-mode`` values that this module implements."""

    HOTP = "hotp"
    TOTP = "totp"


@dataclass(frozen=True)
class TokenSecret:
    """A soft token's key, its HMAC hash and (HOTP) the counter to start from."""

    key: bytes = field(repr=False)
    algorithm: str = "sha1"
    counter: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in _ALGORITHMS:
            raise ValueError("algorithm must be sha1, sha256 or sha512")
        if not self.key:
            raise ValueError("the token key is empty")
        if not 0 <= self.counter <= _MAX_COUNTER:
            raise ValueError("the token counter is out of range")


# -- client side ----------------------------------------------------------------------


def parse_token_secret(text: str, *, mode: TokenMode = TokenMode.HOTP) -> TokenSecret:
    """openconnect's ``--token-secret`` for ``--token-mode=hotp|totp`` (``set_oath_mode``).

    ``[sha1:|sha256:|sha512:]`` (any case), then ``base32:B32`` (any case),
    ``0xHEX`` or the raw string as key bytes; for HOTP a last ``,COUNTER``
    (C ``strtol`` base 0: decimal, ``0x`` hex, leading-0 octal).  Trailing
    whitespace is dropped.  PSKC XML (``<?xml``) is not supported.
    ValueError messages never quote the secret.
    """
    if len(text) > _MAX_SECRET_CHARS:
        raise ValueError("the token secret is too long")
    token = text.rstrip(_C_SPACE)
    if token.startswith("<?xml"):
        raise ValueError("PSKC XML token secrets are not supported")
    algorithm = "sha1"
    for name in ("sha1", "sha256", "sha512"):
        if token[: len(name) + 1].lower() == name + ":":
            algorithm, token = name, token[len(name) + 1 :]
            break
    counter = 0
    if mode is TokenMode.HOTP:
        head, comma, tail = token.rpartition(",")
        if comma:
            token, counter = head, _strtol0(tail)
    if token[:7].lower() == "base32:":
        key = _base32(token[7:])
    elif token.startswith("0x"):
        if not _HEX.match(token[2:]):
            raise ValueError("a 0x token secret needs an even number of hex digits")
        key = bytes.fromhex(token[2:])
    else:
        key = token.encode("utf-8", "surrogatepass")
    if not key:
        raise ValueError("the token secret is empty")
    return TokenSecret(key=key, algorithm=algorithm, counter=counter)


def _base32(text: str) -> bytes:
    # oath.c wants whole 8-character groups, '=' padding only at the end
    if len(text) % 8:
        raise ValueError("a base32 token secret comes in groups of 8 characters")
    try:
        return base64.b32decode(text, casefold=True)
    except (binascii.Error, ValueError):
        raise ValueError("the base32 token secret does not decode") from None


def _strtol0(text: str) -> int:
    """C ``strtol(p, &end, 0)`` followed by oath.c's "only whitespace after" rule."""
    rest = text.lstrip(_C_SPACE)
    negative = rest[:1] == "-"
    if rest[:1] in ("+", "-"):
        rest = rest[1:]
    if rest[:2].lower() == "0x" and rest[2:3] and rest[2] in "0123456789abcdefABCDEF":
        digits, base, rest = rest[2:], 16, rest[2:]
    elif rest[:1] == "0":
        digits, base = rest, 8
    else:
        digits, base = rest, 10
    allowed = "0123456789abcdefABCDEF"[: base if base <= 10 else 22]
    count = 0
    while count < len(digits) and digits[count] in allowed:
        count += 1
    if count == 0:
        # strtol leaves the end pointer at the start: the whole text must be blank
        rest = text
        value = 0
    else:
        value = int(digits[:count], base)
        rest = digits[count:]
    if rest.strip(_C_SPACE):
        raise ValueError("the HOTP counter after ',' is not a number")
    if negative and value:
        raise ValueError("the HOTP counter is negative")
    if value > _MAX_COUNTER:
        raise ValueError("the HOTP counter is out of range")
    return value


def _hotp(key: bytes, digits: int, algorithm: str) -> HOTP:
    # liboath and openconnect take keys of any length; RFC 4226's 128-bit floor is advice
    return HOTP(key, digits, _ALGORITHMS[algorithm](), enforce_key_length=False)


class HotpCodes:
    """RFC 4226 codes from a ``TokenSecret``, one counter value each."""

    __slots__ = ("_counter", "_hotp")

    def __init__(self, secret: TokenSecret, digits: int = 6) -> None:
        if not 6 <= digits <= 8:
            raise ValueError("digits must be 6, 7 or 8")
        self._hotp = _hotp(secret.key, digits, secret.algorithm)
        self._counter = secret.counter

    def __repr__(self) -> str:
        return f"<HotpCodes counter={self._counter}>"

    @property
    def counter(self) -> int:
        """The counter the next code uses."""
        return self._counter

    def next_code(self) -> str:
        """The code of the current counter; the counter then moves on by one."""
        if self._counter > _MAX_COUNTER:
            raise LocalProtocolError("the HOTP counter is exhausted")
        code = self._hotp.generate(self._counter).decode("ascii")
        self._counter += 1
        return code


class TotpCodes:
    """RFC 6238 codes; each time step is handed out once (a gateway refuses a replay)."""

    __slots__ = ("_last_step", "_step_s", "_totp")

    def __init__(self, secret: TokenSecret, step_s: int = 30, digits: int = 6) -> None:
        if not 6 <= digits <= 8:
            raise ValueError("digits must be 6, 7 or 8")
        if step_s < 1:
            raise ValueError("step_s must be at least 1")
        self._totp = TOTP(
            secret.key, digits, _ALGORITHMS[secret.algorithm](), step_s, enforce_key_length=False
        )
        self._step_s = step_s
        self._last_step: int | None = None

    def __repr__(self) -> str:
        return f"<TotpCodes step_s={self._step_s} last_step={self._last_step}>"

    def _step(self, now: float) -> int:
        if not now >= 0:  # also refuses NaN
            raise ValueError("now must be a non-negative time")
        return int(now // self._step_s)

    def wait_s(self, now: float) -> float:
        """0.0 when the current step is later than any used, else the seconds until
        the step after the last one used (a code taken ahead stays used)."""
        step = self._step(now)
        if self._last_step is None or step > self._last_step:
            return 0.0
        return (self._last_step + 1) * self._step_s - now

    def take(self, now: float) -> str:
        """The current step's code; the step is then used (LocalProtocolError if it was)."""
        step = self._step(now)
        if self._last_step is not None and step <= self._last_step:
            raise LocalProtocolError("this TOTP step's code was already used; wait_s() first")
        self._last_step = step
        return self._totp.generate(step * self._step_s).decode("ascii")


# -- server side ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class OtpUser:
    """One line of a liboath UsersFile."""

    mode: TokenMode
    digits: int
    #: the TOTP step; 0 for HOTP
    step_s: int
    key: bytes = field(repr=False)
    #: None for ``-``; ocserv passes no PIN to liboath, so it is read but not checked
    pin: str | None = field(default=None, repr=False)
    #: HOTP: the first counter searched
    counter: int = 0
    #: the last code accepted (refused again, as liboath does)
    last_otp: str | None = field(default=None, repr=False)


def parse_otp_users_file(text: str) -> dict[str, OtpUser]:
    """ocserv's ``otp=`` file (liboath UsersFile, ``usersfile.c``).

    Each line: ``TYPE USER PIN HEXKEY [COUNTER [LASTOTP [TIME]]]``, fields
    split on blanks; ``TYPE`` is ``HOTP[/E][/6|7|8]`` or ``HOTP/T30|T60[/6|7|8]``;
    PIN ``-`` is none; blank lines and ``#`` comments are skipped.  Stricter
    than liboath (which skips lines it cannot read and lets a user have several
    tokens): any such line is a ValueError naming its number, never its secret.
    """
    if len(text) > _MAX_FILE_CHARS:
        raise ValueError("the OTP users file is too large")
    users: dict[str, OtpUser] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(users) >= _MAX_FILE_USERS:
            raise ValueError(f"line {number}: too many users")
        user = _users_file_line(fields, number)
        name = fields[1]
        if name in users:
            raise ValueError(f"line {number}: a second token for one user is not supported")
        users[name] = user
    return users


def _users_file_line(fields: list[str], number: int) -> OtpUser:
    where = f"line {number}"
    if len(fields) < 4:
        raise ValueError(f"{where}: expected TYPE USER PIN HEXKEY [COUNTER [LASTOTP [TIME]]]")
    if len(fields) > 7:
        raise ValueError(f"{where}: too many fields")
    kind = _TOKEN_TYPES.get(fields[0])
    if kind is None:
        raise ValueError(f"{where}: unknown token type (HOTP[/E][/N] or HOTP/T30|T60[/N])")
    step_s, digits = kind
    if not _HEX.match(fields[3]) or len(fields[3]) > 2 * _MAX_FILE_KEY_BYTES:
        raise ValueError(f"{where}: the key is not 1 to 32 bytes of hex")
    counter = 0
    if len(fields) > 4:
        if not _DECIMAL.match(fields[4]) or int(fields[4]) > _MAX_COUNTER:
            raise ValueError(f"{where}: the counter is not a decimal number in range")
        counter = int(fields[4])
    last_otp = fields[5] if len(fields) > 5 else None
    if last_otp is not None and len(last_otp) > _MAX_CODE_CHARS:
        raise ValueError(f"{where}: the last OTP field is too long")
    if len(fields) > 6 and not _TIMESTAMP.match(fields[6]):
        raise ValueError(f"{where}: the time is not YYYY-MM-DDTHH:MM:SSL")
    return OtpUser(
        mode=TokenMode.TOTP if step_s else TokenMode.HOTP,
        digits=digits,
        step_s=step_s,
        key=bytes.fromhex(fields[3]),
        pin=None if fields[2] == "-" else fields[2],
        counter=counter,
        last_otp=last_otp,
    )


#: checked for an unknown user, so that both paths compute the same number of codes
_DUMMY_USER: Final = OtpUser(mode=TokenMode.HOTP, digits=6, step_s=0, key=b"\x00" * 20)


class OtpVerifier:
    """Checks one user's code like ``oath_authenticate_usersfile`` with ocserv's window.

    HOTP: counters ``next .. next+window``; a match moves ``next`` past it, so
    a code is never taken twice.  TOTP: steps ``now-window .. now+window``;
    a match must be of a later step than the user's last one.  Every code of
    the window is computed and compared in constant time, whether the user
    exists or not.  State is in memory (the file is never written back).
    """

    __slots__ = ("_file_last_otp", "_last_step", "_next_counter", "_users", "_window")

    def __init__(self, users: Mapping[str, OtpUser], *, window: int = HOTP_WINDOW) -> None:
        if not 0 <= window <= 1000:
            raise ValueError("window must be within [0, 1000]")
        self._users = MappingProxyType(dict(users))
        self._window = window
        self._next_counter = {name: u.counter for name, u in self._users.items()}
        self._last_step: dict[str, int] = {}
        #: the file's LASTOTP is refused until this process accepts a newer code
        self._file_last_otp = {n: u.last_otp for n, u in self._users.items() if u.last_otp}

    def __repr__(self) -> str:
        return f"<OtpVerifier users={len(self._users)} window={self._window}>"

    def __contains__(self, username: object) -> bool:
        return username in self._users

    def check(self, username: str, code: str, now: float) -> bool:
        """True when ``code`` is ``username``'s next valid code (then it is used up)."""
        known = self._users.get(username)
        user = known if known is not None else _DUMMY_USER
        given = code[:_MAX_CODE_CHARS].encode("utf-8", "surrogatepass")
        if user.mode is TokenMode.HOTP:
            first = self._next_counter.get(username, 0) if known is not None else 0
            candidates = range(first, min(first + self._window, _MAX_COUNTER) + 1)
        else:
            if not now >= 0:
                return False
            current = int(now // user.step_s)
            candidates = range(max(current - self._window, 0), current + self._window + 1)
        # liboath's UsersFile tokens are HMAC-SHA1
        hotp = _hotp(user.key, user.digits, "sha1")
        matched: int | None = None
        for position in candidates:
            # no early exit: the work does not depend on where (or whether) it matches
            if hmac.compare_digest(hotp.generate(position), given) and matched is None:
                matched = position
        last_otp = self._file_last_otp.get(username, "") if known is not None else "-"
        replayed = hmac.compare_digest(last_otp.encode("utf-8", "surrogatepass"), given)
        if known is None or matched is None or replayed or len(code) != user.digits:
            return False
        if user.mode is TokenMode.HOTP:
            self._next_counter[username] = matched + 1
        elif matched <= self._last_step.get(username, -1):
            return False  # this step or an earlier one was used already
        else:
            self._last_step[username] = matched
        self._file_last_otp.pop(username, None)
        return True
