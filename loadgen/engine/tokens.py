"""One-time codes for the identities of one process (``--token-mode``, ``--token-secret``).

A gateway refuses a replayed code: an HOTP counter must move forward and a
TOTP step is good for one login.  So the codes of an identity live here, in
the process that owns the identity (identity slices never overlap across
processes or Locust workers), and a second login of one identity within a
TOTP step waits for the next step; the waits are counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from loadgen.proto.otp import HotpCodes, TokenMode, TotpCodes, parse_token_secret

__all__ = ["TokenBank", "TokenCodes"]


class TokenCodes:
    """The codes of one identity: ``await ready()`` before a login, then ``code()``."""

    __slots__ = ("_bank", "_codes")

    def __init__(self, codes: HotpCodes | TotpCodes, bank: TokenBank) -> None:
        self._codes = codes
        self._bank = bank

    def __repr__(self) -> str:
        return f"<TokenCodes {type(self._codes).__name__}>"

    async def ready(self) -> float:
        """Wait until a fresh code exists (TOTP: the next step); return the seconds waited."""
        if not isinstance(self._codes, TotpCodes):
            return 0.0
        wait = self._codes.wait_s(self._bank.clock())
        if wait > 0:
            self._bank.waits += 1
            self._bank.waited_s += wait
            if self._bank.on_wait is not None:
                self._bank.on_wait(wait)
            # a little past the boundary: the gateway's clock may lag ours
            await trio.sleep(wait + 0.05)
        return wait

    def code(self) -> str:
        """A code no login of this identity has used."""
        if isinstance(self._codes, HotpCodes):
            return self._codes.next_code()
        now = self._bank.clock()
        if self._codes.wait_s(now) > 0:
            # a second code within one login (a retried prompt): the next step's
            now += self._codes.wait_s(now)
        return self._codes.take(now)


class TokenBank:
    """Every identity's codes in this process, by user name (one generator each)."""

    def __init__(
        self,
        mode: TokenMode,
        *,
        clock: Callable[[], float] = time.time,
        max_entries: int = 1_000_000,
    ) -> None:
        self.mode = mode
        self.clock = clock
        self._max = max_entries
        self._by_user: dict[str, TokenCodes] = {}
        #: logins that waited for a fresh TOTP step, and how long in all
        self.waits = 0
        self.waited_s = 0.0
        #: told the seconds of each wait (a metric)
        self.on_wait: Callable[[float], None] | None = None

    def for_user(self, username: str, secret: str) -> TokenCodes:
        """The codes of ``username`` (ValueError for a bad secret, never quoting it)."""
        codes = self._by_user.get(username)
        if codes is not None:
            return codes
        if len(self._by_user) >= self._max:
            raise ValueError(f"more than {self._max} token identities in one process")
        parsed = parse_token_secret(secret, mode=self.mode)
        gen: HotpCodes | TotpCodes = (
            HotpCodes(parsed) if self.mode is TokenMode.HOTP else TotpCodes(parsed)
        )
        codes = self._by_user[username] = TokenCodes(gen, self)
        return codes
