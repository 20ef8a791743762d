"""One-time passwords: RFC vectors, openconnect's secret formats, ocserv's file and checks."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadgen.proto.errors import LocalProtocolError
from loadgen.proto.otp import (
    HOTP_WINDOW,
    HotpCodes,
    OtpUser,
    OtpVerifier,
    TokenMode,
    TokenSecret,
    TotpCodes,
    parse_otp_users_file,
    parse_token_secret,
)

#: RFC 4226 appendix D: secret "12345678901234567890", counters 0..9
RFC4226 = [
    "755224",
    "287082",
    "359152",
    "969429",
    "338314",
    "254676",
    "287922",
    "162583",
    "399871",
    "520489",
]
RFC_KEY = b"12345678901234567890"
#: RFC 6238 appendix B (8 digits): time -> (sha1, sha256, sha512)
RFC6238 = {
    59: ("94287082", "46119246", "90693936"),
    1111111109: ("07081804", "68084774", "25091201"),
    1111111111: ("14050471", "67062674", "99943326"),
    1234567890: ("89005924", "91819424", "93441116"),
    2000000000: ("69279037", "90698825", "38618901"),
    20000000000: ("65353130", "77737706", "47863826"),
}
#: RFC 6238's seeds per hash
RFC6238_KEYS = {
    "sha1": RFC_KEY,
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
SECRET = "s3cr3t-token-value"


# -- codes --------------------------------------------------------------------------


def test_hotp_rfc4226_vectors() -> None:
    codes = HotpCodes(TokenSecret(key=RFC_KEY))
    assert [codes.next_code() for _ in range(10)] == RFC4226
    assert codes.counter == 10


def test_hotp_starts_at_the_secret_counter() -> None:
    codes = HotpCodes(parse_token_secret("12345678901234567890,7"))
    assert codes.counter == 7
    assert codes.next_code() == RFC4226[7]
    assert codes.counter == 8


@pytest.mark.parametrize("when", sorted(RFC6238))
@pytest.mark.parametrize("index,algorithm", list(enumerate(["sha1", "sha256", "sha512"])))
def test_totp_rfc6238_vectors(when: int, index: int, algorithm: str) -> None:
    secret = TokenSecret(key=RFC6238_KEYS[algorithm], algorithm=algorithm)
    assert TotpCodes(secret, digits=8).take(float(when)) == RFC6238[when][index]


def test_totp_refuses_a_step_twice_and_says_how_long_to_wait() -> None:
    codes = TotpCodes(TokenSecret(key=RFC_KEY))
    assert codes.wait_s(59.0) == 0.0
    first = codes.take(59.0)
    assert codes.wait_s(59.5) == pytest.approx(0.5)
    with pytest.raises(LocalProtocolError):
        codes.take(59.9)
    assert codes.wait_s(60.0) == 0.0
    assert codes.take(60.0) != first


def test_reprs_hold_no_key() -> None:
    secret = parse_token_secret(SECRET)
    for thing in (secret, HotpCodes(secret), TotpCodes(secret)):
        assert SECRET not in repr(thing)
        assert repr(secret.key) not in repr(thing)


# -- openconnect's --token-secret ------------------------------------------------------


@pytest.mark.parametrize(
    "text,key,algorithm,counter",
    [
        ("12345678901234567890", RFC_KEY, "sha1", 0),
        ("0x3132333435363738393031323334353637383930", RFC_KEY, "sha1", 0),
        ("base32:" + base64.b32encode(RFC_KEY).decode(), RFC_KEY, "sha1", 0),
        ("BASE32:" + base64.b32encode(RFC_KEY).decode().lower(), RFC_KEY, "sha1", 0),
        ("sha256:0x3132", b"12", "sha256", 0),
        ("SHA512:abc", b"abc", "sha512", 0),
        ("sha1:abc,5", b"abc", "sha1", 5),
        ("abc,0x10", b"abc", "sha1", 16),
        ("abc,010", b"abc", "sha1", 8),
        ("abc, 12 \n", b"abc", "sha1", 12),
        ("abc,", b"abc", "sha1", 0),
        ("a,b,3", b"a,b", "sha1", 3),
        ("abc  \t", b"abc", "sha1", 0),
    ],
)
def test_token_secret_formats(text: str, key: bytes, algorithm: str, counter: int) -> None:
    assert parse_token_secret(text) == TokenSecret(key=key, algorithm=algorithm, counter=counter)


def test_totp_keeps_the_comma_in_a_raw_secret() -> None:
    assert parse_token_secret("abc,5", mode=TokenMode.TOTP).key == b"abc,5"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "sha1:",
        "0x",
        "0xabc",
        "0xzz",
        "base32:ABC",
        "base32:1AAAAAAA",
        "abc,-1",
        "abc,12x",
        "abc,99999999999999999999",
        '<?xml version="1.0"?><KeyContainer/>',
        "x" * 5000,
    ],
)
def test_bad_token_secrets(text: str) -> None:
    with pytest.raises(ValueError):
        parse_token_secret(text)


@given(st.text(max_size=80), st.sampled_from(list(TokenMode)))
def test_token_secret_parser_only_raises_value_error(text: str, mode: TokenMode) -> None:
    secret_part = "Zq9-" + text
    try:
        parsed = parse_token_secret(secret_part, mode=mode)
    except ValueError as exc:
        assert secret_part not in str(exc)
    else:
        assert parsed.key
        assert parsed.counter >= 0


# -- ocserv's OTP users file -------------------------------------------------------------

KEY_HEX = RFC_KEY.hex()
FILE = f"""# ocserv otp= file
HOTP\talice\t-\t{KEY_HEX}
HOTP/E/8 bob 1234 {KEY_HEX} 5
HOTP/T30 carol - {KEY_HEX} 0 123456 2015-09-25T13:18:42L

HOTP/T60/7 dave - 00
"""


def test_parse_users_file() -> None:
    users = parse_otp_users_file(FILE)
    assert sorted(users) == ["alice", "bob", "carol", "dave"]
    assert users["alice"] == OtpUser(mode=TokenMode.HOTP, digits=6, step_s=0, key=RFC_KEY)
    assert users["bob"].digits == 8 and users["bob"].counter == 5 and users["bob"].pin == "1234"
    assert users["carol"].mode is TokenMode.TOTP and users["carol"].step_s == 30
    assert users["carol"].last_otp == "123456"
    assert users["dave"].step_s == 60 and users["dave"].digits == 7 and users["dave"].key == b"\0"
    assert KEY_HEX not in repr(users) and "1234" not in repr(users["bob"])


def test_ocserv_sample_file_parses() -> None:
    # ocserv's doc/sample.otp and tests/data/test-otp.oath lines
    users = parse_otp_users_file(
        "HOTP/T30\ttest\t-\t8a2d55707a9084982649dadc04b426a06df19ab2\t1\t691245"
        "\t2015-09-25T13:18:42L\nHOTP tost - acbd18db4cc2f85cedef654fccc4a4d8bd537891\n"
    )
    assert set(users) == {"test", "tost"}


@pytest.mark.parametrize(
    "line",
    [
        "HOTP alice -",
        f"TOTP alice - {KEY_HEX}",
        f"HOTP/T30/9 alice - {KEY_HEX}",
        "HOTP alice - abc",
        "HOTP alice - zz",
        f"HOTP alice - {'00' * 33}",
        f"HOTP alice - {KEY_HEX} -3",
        f"HOTP alice - {KEY_HEX} 99999999999999999999",
        f"HOTP alice - {KEY_HEX} 1 2 yesterday",
        f"HOTP alice - {KEY_HEX} 1 2 2015-09-25T13:18:42L extra",
        f"HOTP alice - {KEY_HEX} 1 {'9' * 17}",
    ],
)
def test_bad_users_file_lines_name_the_line_not_the_secret(line: str) -> None:
    with pytest.raises(ValueError, match="line 2") as info:
        parse_otp_users_file("# first\n" + line + "\n")
    assert KEY_HEX not in str(info.value)


def test_a_second_token_for_a_user_is_refused() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_otp_users_file(f"HOTP a - {KEY_HEX}\nHOTP a - {KEY_HEX}\n")


@given(st.text(alphabet=st.sampled_from("HOTP/ET3068 \t\n#-abcdef0123456789xyz"), max_size=200))
def test_users_file_parser_only_raises_value_error(text: str) -> None:
    try:
        users = parse_otp_users_file(text)
    except ValueError as exc:
        assert str(exc).startswith("line ")
    else:
        for user in users.values():
            assert user.digits in (6, 7, 8) and user.key


@given(st.text(max_size=300))
def test_users_file_parser_on_any_text(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_otp_users_file(text)


# -- the verifier ------------------------------------------------------------------------


def verifier(text: str = FILE, **kwargs: int) -> OtpVerifier:
    return OtpVerifier(parse_otp_users_file(text), **kwargs)


def test_hotp_accepts_in_order_and_refuses_replays() -> None:
    v = verifier()
    assert v.check("alice", RFC4226[0], 0.0)
    assert not v.check("alice", RFC4226[0], 0.0)  # replay
    assert v.check("alice", RFC4226[1], 0.0)
    # a skipped code is within the window; then the earlier ones are gone
    assert v.check("alice", RFC4226[5], 0.0)
    assert not v.check("alice", RFC4226[3], 0.0)
    assert v.check("alice", RFC4226[6], 0.0)


def test_hotp_window_is_ocservs() -> None:
    assert HOTP_WINDOW == 20
    codes = HotpCodes(TokenSecret(key=RFC_KEY))
    all_codes = [codes.next_code() for _ in range(30)]
    v = verifier(f"HOTP a - {KEY_HEX}\nHOTP b - {KEY_HEX}\n")
    assert v.check("a", all_codes[20], 0.0)  # counter 0 + 20: the edge of the window
    if all_codes[21] not in all_codes[:21]:
        assert not v.check("b", all_codes[21], 0.0)


def test_hotp_counter_from_file_and_digits() -> None:
    v = verifier()
    eight = HotpCodes(TokenSecret(key=RFC_KEY, counter=5), digits=8)
    code = eight.next_code()
    assert not v.check("bob", code[-6:], 0.0)  # wrong length
    assert v.check("bob", code, 0.0)


def test_totp_window_and_step_once() -> None:
    now = 1_111_111_111.0
    totp = TotpCodes(TokenSecret(key=RFC_KEY))
    code = totp.take(now)
    v = verifier(f"HOTP/T30 c - {KEY_HEX}\n")
    assert not v.check("c", code, now + 21 * 30)  # outside 20 steps
    assert v.check("c", code, now + 20 * 30)
    assert not v.check("c", code, now)  # the same step again
    earlier = TotpCodes(TokenSecret(key=RFC_KEY)).take(now - 30)
    assert not v.check("c", earlier, now)  # an older step after a newer one
    later = TotpCodes(TokenSecret(key=RFC_KEY)).take(now + 30)
    assert v.check("c", later, now)


def test_file_last_otp_is_refused() -> None:
    code = HotpCodes(TokenSecret(key=RFC_KEY, counter=3)).next_code()
    v = verifier(f"HOTP a - {KEY_HEX} 3 {code}\n")
    assert not v.check("a", code, 0.0)
    assert v.check("a", HotpCodes(TokenSecret(key=RFC_KEY, counter=4)).next_code(), 0.0)


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "٠١٢٣٤٥", "9" * 1000])
def test_junk_codes_are_refused(code: str) -> None:
    assert not verifier().check("alice", code, 0.0)


def test_unknown_user_is_refused_even_with_a_valid_code() -> None:
    v = verifier()
    assert not v.check("mallory", RFC4226[0], 0.0)
    assert not v.check("mallory", "328482", 0.0)  # the dummy key's own code for counter 0
    assert "mallory" not in v and "alice" in v


def test_unknown_user_computes_as_many_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives.twofactor import hotp

    calls: list[int] = []
    real = hotp.HOTP.generate

    def counting(self: hotp.HOTP, counter: int) -> bytes:
        calls.append(counter)
        return real(self, counter)

    monkeypatch.setattr(hotp.HOTP, "generate", counting)
    v = verifier()
    v.check("alice", "000000", 0.0)
    known = len(calls)
    calls.clear()
    v.check("nobody", "000000", 0.0)
    assert len(calls) == known == HOTP_WINDOW + 1
