"""Identity feeders: parsing, slices across processes, uniqueness, host names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.engine.feeder import (
    Credentials,
    FeederError,
    FeederExhaustedError,
    HostnameFactory,
    ListFeeder,
    PatternFeeder,
    load_credentials,
    new_run_id,
    parse_credentials_text,
)

USERS_TXT = """\
# test users
alice:s3cret:staff

bob:hunter2
  carol:pw3:
"""


def test_parse_colon_lines() -> None:
    creds = parse_credentials_text(USERS_TXT)
    assert creds == [
        Credentials("alice", "s3cret", "staff"),
        Credentials("bob", "hunter2", None),
        Credentials("carol", "pw3", None),
    ]


def test_parse_colon_lines_group_may_be_empty() -> None:
    assert parse_credentials_text("carol:pw3:\r\n") == [Credentials("carol", "pw3", None)]


def test_parse_csv_with_quotes_and_column_order() -> None:
    text = 'password,username,group\n"pa:ss,word",dave,eng\nx,erin,\n'
    assert parse_credentials_text(text) == [
        Credentials("dave", "pa:ss,word", "eng"),
        Credentials("erin", "x", None),
    ]


def test_parse_csv_without_group_and_with_comments() -> None:
    text = "# exported\nusername,password\n# first\nu1,p1\nu2,p2\n"
    assert [c.username for c in parse_credentials_text(text)] == ["u1", "u2"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "no identities"),
        ("# only a comment\n\n", "no identities"),
        ("alice\n", "line 1: expected user:password"),
        ("ok:pw\nbad:pass:word:more\n", "line 2: expected user:password"),
        (":nouser\n", "expected user:password"),
        ("alice:\n", "expected user:password"),
        ("a:1\nb:2\na:3\n", "user 'a' appears twice"),
        ("username,password,role\nu,p,r\n", "CSV header"),
        ("username,password\n", "a CSV header but no identities"),
        ("username,password\nu1\n", "line 2: 1 columns"),
        ("username,password\n,pw\n", "empty username"),
    ],
)
def test_parse_errors(text: str, match: str) -> None:
    with pytest.raises(FeederError, match=match):
        parse_credentials_text(text, source="users.txt")


def test_errors_never_show_passwords() -> None:
    for text in ("alice:TOPSECRET:g:extra\n", "alice:TOPSECRET\nalice:TOPSECRET\n"):
        with pytest.raises(FeederError) as info:
            parse_credentials_text(text)
        assert "TOPSECRET" not in str(info.value)
    assert "TOPSECRET" not in repr(Credentials("alice", "TOPSECRET", "g"))


def test_load_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text(USERS_TXT)
    feeder = load_credentials(path)
    assert feeder.size == 3
    assert feeder.get(1) == Credentials("bob", "hunter2")
    with pytest.raises(FeederError, match="cannot read credentials file"):
        load_credentials(tmp_path / "missing.txt")


# -- patterns -----------------------------------------------------------------------


def test_pattern_feeder() -> None:
    feeder = PatternFeeder("user{n:05d}", password="pw", group="g")
    assert feeder.size is None
    assert feeder.get(0) == Credentials("user00001", "pw", "g")
    assert feeder.get(41).username == "user00042"
    pw = PatternFeeder("u{n}", password_pattern="pw-{n}-x", first=0, count=3)
    assert [pw.get(i) for i in range(3)] == [
        Credentials("u0", "pw-0-x"),
        Credentials("u1", "pw-1-x"),
        Credentials("u2", "pw-2-x"),
    ]
    with pytest.raises(IndexError):
        pw.get(3)


def test_pattern_fixed_password_is_literal() -> None:
    assert PatternFeeder("u{n}", password="{not-a-field}").get(0).password == "{not-a-field}"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"username_pattern": "user", "password": "p"}, "needs {n}"),
        ({"username_pattern": "user{i}", "password": "p"}, "only field allowed"),
        ({"username_pattern": "user{}", "password": "p"}, "bad username pattern|only field"),
        ({"username_pattern": "user{n", "password": "p"}, "bad username pattern"),
        ({"username_pattern": "user{n:q}", "password": "p"}, "bad username pattern"),
        ({"username_pattern": "u{n}"}, "either a password or a password pattern"),
        ({"username_pattern": "u{n}", "password": "a", "password_pattern": "b"}, "either"),
        ({"username_pattern": "u{n}", "password_pattern": "{x}"}, "bad password pattern"),
    ],
)
def test_pattern_errors(kwargs: dict[str, str], match: str) -> None:
    with pytest.raises(FeederError, match=match):
        PatternFeeder(**kwargs)  # type: ignore[arg-type]


# -- slices and uniqueness ----------------------------------------------------------


def _names(feeder: ListFeeder | PatternFeeder, count: int, n: int) -> list[list[str]]:
    out = []
    for k in range(count):
        s = feeder.slice(k, count)
        size = s.size if s.size is not None else n
        out.append([s.get(i).username for i in range(size)])
    return out


def test_list_slices_are_strided_disjoint_and_covering() -> None:
    feeder = ListFeeder([Credentials(f"u{i}", "p") for i in range(10)])
    parts = _names(feeder, 3, 0)
    assert parts == [["u0", "u3", "u6", "u9"], ["u1", "u4", "u7"], ["u2", "u5", "u8"]]
    flat = [u for part in parts for u in part]
    assert sorted(flat) == sorted(f"u{i}" for i in range(10))
    assert len(set(flat)) == len(flat)


def test_more_slices_than_identities() -> None:
    feeder = ListFeeder([Credentials("a", "p"), Credentials("b", "p")])
    assert [feeder.slice(k, 4).size for k in range(4)] == [1, 1, 0, 0]


def test_slice_of_slice_stays_disjoint() -> None:
    feeder = PatternFeeder("user{n}", password="p")
    # 2 Locust workers, each with 3 engine processes
    names = [
        feeder.slice(w, 2).slice(p, 3).get(i).username
        for w in range(2)
        for p in range(3)
        for i in range(50)
    ]
    assert len(set(names)) == 300
    assert set(names) == {f"user{n}" for n in range(1, 301)}


@pytest.mark.parametrize(("index", "count"), [(0, 0), (3, 3), (-1, 2)])
def test_slice_arguments_checked(index: int, count: int) -> None:
    with pytest.raises(ValueError, match="0 <= index < count"):
        PatternFeeder("u{n}", password="p").slice(index, count)


def test_unique_across_three_processes_pattern() -> None:
    feeder = PatternFeeder("user{n}", password="p")
    pools = [feeder.slice(k, 3).pool() for k in range(3)]
    names = [pool.acquire().username for _ in range(1000) for pool in pools]
    assert len(names) == len(set(names)) == 3000


def test_unique_across_three_processes_file() -> None:
    feeder = ListFeeder([Credentials(f"u{i}", "p") for i in range(30)])
    pools = [feeder.slice(k, 3).pool() for k in range(3)]
    names = [pool.acquire().username for _ in range(10) for pool in pools]
    assert len(set(names)) == 30
    for pool in pools:
        with pytest.raises(FeederExhaustedError):
            pool.acquire()


def test_file_feeder_exhaustion_is_a_clear_error() -> None:
    feeder = ListFeeder([Credentials(f"u{i}", "p") for i in range(5)], source="users.txt")
    part = feeder.slice(0, 2)  # u0, u2, u4
    with pytest.raises(
        FeederExhaustedError, match=r"4 unique users, but users.txt slice 0/2 holds 3"
    ):
        part.require(4)
    part.require(3)
    pool = part.pool()
    assert [pool.acquire().username for _ in range(3)] == ["u0", "u2", "u4"]
    with pytest.raises(FeederExhaustedError, match=r"all 3 identities .* in use.*allow reuse"):
        pool.acquire()


def test_released_identities_serve_again_oldest_first() -> None:
    pool = ListFeeder([Credentials(f"u{i}", "p") for i in range(3)]).pool()
    a, b, c = pool.acquire(), pool.acquire(), pool.acquire()
    pool.release(b)
    pool.release(a)
    pool.release(Credentials("stranger", "p"))  # ignored
    assert pool.in_use == 1
    assert [pool.acquire(), pool.acquire()] == [b, a]
    with pytest.raises(FeederExhaustedError):
        pool.acquire()
    assert c.username == "u2"


def test_allow_reuse_shares_identities_round_robin() -> None:
    pool = ListFeeder([Credentials(f"u{i}", "p") for i in range(2)]).pool(allow_reuse=True)
    names = [pool.acquire().username for _ in range(5)]
    assert names == ["u0", "u1", "u0", "u1", "u0"]


def test_unbounded_pattern_require_always_passes() -> None:
    PatternFeeder("u{n}", password="p").slice(1, 4).require(10**9)


# -- host names -----------------------------------------------------------------------

HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def test_hostnames_valid_and_unique_across_processes() -> None:
    run_id = new_run_id(lambda n: bytes(range(200, 200 + n)))
    factories = [HostnameFactory(run_id, k) for k in range(3)]
    names = [f.next() for _ in range(2000) for f in factories]
    assert len(set(names)) == len(names)
    assert all(HOSTNAME.fullmatch(n) for n in names)
    assert names[0] == f"loadgen-{run_id}-0-0"
    assert names[-1] == f"loadgen-{run_id}-2-1999"


def test_hostname_worst_case_length() -> None:
    name = HostnameFactory("abcdefghijkl", 9999).hostname(10**12)
    assert len(name) <= 63
    assert HOSTNAME.fullmatch(name)


def test_new_run_id_uses_injected_randomness() -> None:
    assert new_run_id(lambda n: bytes([0, 1, 25, 26, 31, 32][:n])) == "abz27a"
    run_id = new_run_id(lambda n: b"\xff" * n, length=8)
    assert re.fullmatch(r"[a-z2-7]{8}", run_id)


@pytest.mark.parametrize("run_id", ["", "ABC", "a-b", "x" * 13, "a.b"])
def test_hostname_factory_rejects_bad_run_ids(run_id: str) -> None:
    with pytest.raises(ValueError, match="run id"):
        HostnameFactory(run_id, 0)


def test_hostname_factory_rejects_negative_numbers() -> None:
    with pytest.raises(ValueError):
        HostnameFactory("abc", -1)
    with pytest.raises(ValueError):
        HostnameFactory("abc", 0).hostname(-1)


# -- the CSV columns of issue 13, under hypothesis ------------------------------------------

_CELL = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00XYZ"),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    columns=st.permutations(
        ["username", "password", "group", "certificate", "sslkey", "key_password", "token_secret"]
    ),
    rows=st.lists(st.lists(_CELL, min_size=7, max_size=7), min_size=1, max_size=4),
    secret=st.text(alphabet="XYZ", min_size=6, max_size=6),
)
def test_csv_with_every_column_parses_or_fails_typed(
    columns: list[str], rows: list[list[str]], secret: str
) -> None:
    # the secret columns hold a marker that must never reach an error message
    hidden = {
        columns.index("password"),
        columns.index("key_password"),
        columns.index("token_secret"),
    }
    lines = [",".join(columns)]
    for row in rows:
        cells = [
            f'"{c.replace(chr(34), "")}{secret}"' if i in hidden else f'"{c.replace(chr(34), "")}"'
            for i, c in enumerate(row)
        ]
        lines.append(",".join(cells))
    try:
        creds = parse_credentials_text("\n".join(lines) + "\n")
    except FeederError as exc:
        assert secret not in str(exc)
        return
    for c in creds:
        assert secret in c.password and c.key_password is not None and secret in c.key_password
        assert secret not in repr(c)
