"""One-time codes per identity: HOTP counters move on, a TOTP step serves one login."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.hotp import HOTP
from cryptography.hazmat.primitives.twofactor.totp import TOTP

from loadgen.engine.tokens import TokenBank
from loadgen.proto.otp import TokenMode

KEY = b"12345678901234567890"
SECRET = "0x" + KEY.hex()


def test_hotp_counters_are_per_identity_and_move_on() -> None:
    bank = TokenBank(TokenMode.HOTP)
    alice, bob = bank.for_user("alice", SECRET), bank.for_user("bob", SECRET + ",5")
    hotp = HOTP(KEY, 6, SHA1())
    assert [alice.code(), alice.code()] == [hotp.generate(0).decode(), hotp.generate(1).decode()]
    assert bob.code() == hotp.generate(5).decode()
    # the same identity asked again keeps its counter
    assert bank.for_user("alice", SECRET).code() == hotp.generate(2).decode()


def test_totp_second_login_in_a_step_waits_for_the_next_and_is_counted() -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    base = 30.0 * 56_666_667 + 10  # 10 s into a 30 s step
    bank = TokenBank(TokenMode.TOTP, clock=lambda: base + trio.current_time())
    waits: list[float] = []
    bank.on_wait = waits.append
    totp = TOTP(KEY, 6, SHA1(), 30)
    codes: list[str] = []

    async def logins() -> None:
        token = bank.for_user("alice", SECRET)
        for _ in range(2):
            assert await token.ready() >= 0
            codes.append(token.code())

    trio.run(logins, clock=clock)
    step = int(base // 30) * 30
    assert codes == [totp.generate(step).decode(), totp.generate(step + 30).decode()]
    assert bank.waits == 1 and waits == [pytest.approx(20.0)]
    assert bank.waited_s == pytest.approx(20.0)


def test_a_bad_secret_is_refused_without_quoting_it() -> None:
    with pytest.raises(ValueError) as info:
        TokenBank(TokenMode.HOTP).for_user("alice", "0xabc-not-hex-Zz9")
    assert "not-hex-Zz9" not in str(info.value)


def test_the_bank_is_bounded() -> None:
    bank = TokenBank(TokenMode.HOTP, max_entries=2)
    bank.for_user("a", SECRET)
    bank.for_user("b", SECRET)
    with pytest.raises(ValueError, match="more than 2"):
        bank.for_user("c", SECRET)
