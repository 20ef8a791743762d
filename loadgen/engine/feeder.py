"""User identities and client host names for many sessions and processes.

Gateways evict an older session of the same user (ocserv ``max-same-clients``,
ASA simultaneous logins), so two live sessions must never share a user name,
in one process or across processes and Locust workers.

Slicing is strided: slice k of N takes identities k, k+N, k+2N, ...  Unlike
contiguous blocks, that needs no session count known in advance (pattern
feeders are unbounded), balances processes that stop early, and composes: a
slice of a slice is again disjoint from every other slice.

Secrets: a password is never part of a repr or an error message.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import string
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Credentials",
    "FeederError",
    "FeederExhaustedError",
    "HostnameFactory",
    "IdentityFeeder",
    "IdentityPool",
    "ListFeeder",
    "PatternFeeder",
    "check_user_pattern",
    "load_credentials",
    "new_run_id",
    "parse_credentials_text",
]


class FeederError(ValueError):
    """Identities cannot be read or handed out as asked."""


class FeederExhaustedError(FeederError):
    """More sessions than unique identities."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    group: str | None = None
    #: a client certificate of its own (CSV columns certificate, sslkey, key_password)
    certificate: str | None = None
    sslkey: str | None = None
    key_password: str | None = field(default=None, repr=False)
    #: its soft token (CSV column token_secret)
    token_secret: str | None = field(default=None, repr=False)
    #: its number: ``{n}`` of a pattern, the line's rank in a file (fills ``{n}`` in
    #: a ``--certificate`` pattern)
    n: int = field(default=0, compare=False)


# -- parsing ------------------------------------------------------------------

_CSV_COLUMNS = {
    "username",
    "password",
    "group",
    "certificate",
    "sslkey",
    "key_password",
    "token_secret",
}
#: columns that may be empty on a row (the rest of a row's identity is elsewhere)
_OPTIONAL = ("group", "certificate", "sslkey", "key_password", "token_secret")


def _content_lines(text: str) -> list[tuple[int, str]]:
    """(line number, stripped line) without blank lines and ``#`` comments."""
    out = []
    # "\n" only: splitlines() also breaks at \x1c-\x1e, \x85 and U+2028, which csv
    # does not, and the line numbers would no longer match the rows
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


def _is_csv_header(line: str) -> bool:
    names = [c.strip().lower() for c in line.split(",")]
    return "username" in names and ("password" in names or "certificate" in names)


def parse_credentials_text(text: str, *, source: str = "<text>") -> list[Credentials]:
    """Identities from ``user:password[:group]`` lines, or from CSV when the
    first line is a header with ``username`` and ``password`` or
    ``certificate`` (``group``, ``sslkey``, ``key_password``, ``token_secret``
    optional; a row needs a password or a certificate).  Blank lines and
    lines starting with ``#`` are ignored, and each line is stripped: a
    password with ``:`` or edge spaces needs CSV.  User names must be unique."""
    lines = _content_lines(text)
    if not lines:
        raise FeederError(f"{source}: no identities (only blank lines or comments)")
    if _is_csv_header(lines[0][1]):
        creds = _parse_csv(lines, source)
    else:
        creds = [_parse_colon(number, line, source) for number, line in lines]
    creds = [dataclasses.replace(c, n=index + 1) for index, c in enumerate(creds)]
    seen: dict[str, int] = {}
    for index, c in enumerate(creds):
        if c.username in seen:
            raise FeederError(
                f"{source}: user {c.username!r} appears twice (identities {seen[c.username] + 1}"
                f" and {index + 1}); the gateway would evict one session of a duplicate user"
            )
        seen[c.username] = index
    return creds


def _parse_colon(number: int, line: str, source: str) -> Credentials:
    parts = line.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        # Only the user name: the line may hold a password.
        raise FeederError(
            f"{source}, line {number}: expected user:password[:group] "
            f"(user {parts[0]!r}); use a CSV file for passwords containing ':'"
        )
    group = parts[2] if len(parts) == 3 and parts[2] else None
    return Credentials(parts[0], parts[1], group)


def _parse_csv(lines: list[tuple[int, str]], source: str) -> list[Credentials]:
    rows = list(csv.reader(io.StringIO("\n".join(line for _, line in lines))))
    header = [c.strip().lower() for c in rows[0]]
    unknown = [c for c in header if c not in _CSV_COLUMNS]
    if unknown or len(set(header)) != len(header):
        # the header names no secret, so it may be quoted
        raise FeederError(
            f"{source}: CSV header columns are username, then password and/or certificate, "
            f"optionally {', '.join(_OPTIONAL)}, once each; got {rows[0]}"
        )
    col = {name: header.index(name) for name in header}
    out = []
    for (number, _), row in zip(lines[1:], rows[1:], strict=True):
        if len(row) != len(header):
            raise FeederError(
                f"{source}, line {number}: {len(row)} columns, the header has {len(header)}"
            )
        user = row[col["username"]].strip()
        password = row[col["password"]] if "password" in col else ""
        extra = {
            name: (row[col[name]].strip() or None) if name in col else None for name in _OPTIONAL
        }
        if not user or not (password or extra["certificate"]):
            raise FeederError(
                f"{source}, line {number}: empty username, or neither password nor certificate"
            )
        out.append(
            Credentials(
                user,
                password,
                extra["group"],
                certificate=extra["certificate"],
                sslkey=extra["sslkey"],
                key_password=extra["key_password"],
                token_secret=extra["token_secret"],
            )
        )
    if not out:
        raise FeederError(f"{source}: a CSV header but no identities")
    return out


def load_credentials(path: Path | str) -> ListFeeder:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FeederError(f"cannot read credentials file {path}: {exc}") from exc
    return ListFeeder(parse_credentials_text(text, source=str(path)), source=str(path))


# -- feeders ------------------------------------------------------------------


class IdentityFeeder:
    """Identities by index; ``size`` None: unbounded.  Subclasses give ``_get``."""

    def __init__(self, *, size: int | None, source: str) -> None:
        self.size = size
        self.source = source

    def _get(self, index: int) -> Credentials:
        raise NotImplementedError

    def get(self, index: int) -> Credentials:
        if index < 0 or (self.size is not None and index >= self.size):
            raise IndexError(f"identity {index} outside {self.source} (size {self.size})")
        return self._get(index)

    def slice(self, index: int, count: int) -> IdentityFeeder:
        """Identities index, index+count, index+2*count, ... (process ``index``
        of ``count``).  Slices with the same ``count`` are disjoint and
        together cover every identity."""
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"slice needs 0 <= index < count, got {index} of {count}")
        return _Strided(self, index, count)

    def pool(self, *, allow_reuse: bool = False) -> IdentityPool:
        return IdentityPool(self, allow_reuse=allow_reuse)

    def require(self, sessions: int) -> None:
        """Fail now, before any traffic, if ``sessions`` concurrent sessions
        cannot each have their own identity."""
        if self.size is not None and sessions > self.size:
            raise FeederExhaustedError(
                f"{sessions} concurrent sessions need {sessions} unique users, but "
                f"{self.source} holds {self.size}; add users, run fewer sessions, or allow reuse "
                "(the gateway may then evict sessions of the same user)"
            )


class ListFeeder(IdentityFeeder):
    def __init__(self, identities: Sequence[Credentials], *, source: str = "list") -> None:
        super().__init__(size=len(identities), source=source)
        self._items = list(identities)

    def _get(self, index: int) -> Credentials:
        return self._items[index]


def check_user_pattern(pattern: str, *, need_n: bool = True) -> None:
    """FeederError unless ``pattern`` is a user name pattern: ``{n}`` is the only
    field, and is there when ``need_n`` (many sessions need unique users)."""
    _check_pattern(pattern, "username" if need_n else "user name")


def _check_pattern(pattern: str, what: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
        if any(f != "n" for f in fields):
            raise ValueError("the only field allowed is {n}")
        pattern.format(n=0)
    except ValueError as exc:
        raise FeederError(f"bad {what} pattern {pattern!r}: {exc}") from None
    if what == "username" and not fields:
        raise FeederError(f"username pattern {pattern!r} needs {{n}} (e.g. user{{n}})")


class PatternFeeder(IdentityFeeder):
    """``user{n}`` / ``user{n:05d}`` with ``n = first + index``; unbounded
    unless ``count`` is given.  The password is ``password`` as is, or
    ``password_pattern`` formatted with the same ``n``."""

    def __init__(
        self,
        username_pattern: str,
        *,
        password: str | None = None,
        password_pattern: str | None = None,
        group: str | None = None,
        first: int = 1,
        count: int | None = None,
    ) -> None:
        if (password is None) == (password_pattern is None):
            raise FeederError("give either a password or a password pattern")
        _check_pattern(username_pattern, "username")
        if password_pattern is not None:
            _check_pattern(password_pattern, "password")
        if count is not None and count < 0:
            raise FeederError(f"count must be >= 0, got {count}")
        super().__init__(size=count, source=f"pattern {username_pattern!r}")
        self._user = username_pattern
        self._password = password
        self._password_pattern = password_pattern
        self._group = group
        self._first = first

    def _get(self, index: int) -> Credentials:
        n = self._first + index
        if self._password_pattern is not None:
            password = self._password_pattern.format(n=n)
        else:
            assert self._password is not None
            password = self._password
        return Credentials(self._user.format(n=n), password, self._group, n=n)


class _Strided(IdentityFeeder):
    def __init__(self, base: IdentityFeeder, offset: int, step: int) -> None:
        size = None if base.size is None else max(0, -(-(base.size - offset) // step))
        super().__init__(size=size, source=f"{base.source} slice {offset}/{step}")
        self._base, self._offset, self._step = base, offset, step

    def _get(self, index: int) -> Credentials:
        return self._base.get(self._offset + index * self._step)


class IdentityPool:
    """Hands out identities so that no two live sessions share one.

    ``acquire`` gives a never-used identity first, then one ``release``d by a
    session that has ended (oldest first: the gateway has had the most time
    to forget it).  With neither left it raises FeederExhaustedError, unless
    ``allow_reuse``: then identities in use are shared round-robin, and the
    gateway may evict sessions (the user asked for it).
    """

    def __init__(self, feeder: IdentityFeeder, *, allow_reuse: bool = False) -> None:
        self._feeder = feeder
        self._allow_reuse = allow_reuse
        self._next_fresh = 0
        self._free: deque[int] = deque()
        self._in_use: dict[str, int] = {}
        self._reuse_cursor = 0

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def acquire(self) -> Credentials:
        size = self._feeder.size
        if size is None or self._next_fresh < size:
            index = self._next_fresh
            self._next_fresh += 1
        elif self._free:
            index = self._free.popleft()
        elif self._allow_reuse and size > 0:
            index = self._reuse_cursor % size
            self._reuse_cursor += 1
            return self._feeder.get(index)
        else:
            raise FeederExhaustedError(
                f"all {size} identities of {self._feeder.source} are in use by live sessions; "
                "add users, run fewer sessions per process, or allow reuse "
                "(the gateway may then evict sessions of the same user)"
            )
        creds = self._feeder.get(index)
        self._in_use[creds.username] = index
        return creds

    def release(self, creds: Credentials) -> None:
        """The session of ``creds`` has ended; its identity may serve again."""
        index = self._in_use.pop(creds.username, None)
        if index is not None:
            self._free.append(index)


# -- host names -------------------------------------------------------------------

_RUN_ID = re.compile(r"[a-z0-9]{1,12}")
_B32 = "abcdefghijklmnopqrstuvwxyz234567"


def new_run_id(random_bytes: Callable[[int], bytes], length: int = 6) -> str:
    """A short lowercase id for one run (base32 letters and digits)."""
    data = random_bytes(length)
    return "".join(_B32[b % 32] for b in data[:length])


class HostnameFactory:
    """``X-CSTP-Hostname`` values ``loadgen-<run id>-<process>-<n>``, unique
    per session across the processes of one run (protocol.md §4.1: give each
    simulated client a unique name; ocserv validates and shows it).  One DNS
    label: lowercase letters, digits and '-', at most 63 characters."""

    PREFIX = "loadgen"

    def __init__(self, run_id: str, process: int) -> None:
        if _RUN_ID.fullmatch(run_id) is None:
            raise ValueError(f"run id must be 1 to 12 lowercase letters or digits, got {run_id!r}")
        if process < 0:
            raise ValueError(f"process index must be >= 0, got {process}")
        self.run_id = run_id
        self.process = process
        self._count = 0

    def hostname(self, n: int) -> str:
        if n < 0:
            raise ValueError(f"session number must be >= 0, got {n}")
        name = f"{self.PREFIX}-{self.run_id}-{self.process}-{n}"
        if len(name) > 63:
            raise ValueError(f"host name {name!r} longer than 63 characters")
        return name

    def next(self) -> str:
        """The next session number's host name."""
        name = self.hostname(self._count)
        self._count += 1
        return name
