"""Client certificates (loadgen/engine/certs.py): PEM and PKCS#12 loading, the typed
errors, the staged PKCS#12 file, the per-identity context cache, and a real TLS
handshake against a server that requires a client certificate.

Whether a context really presents the certificate is the server ``ssl`` object's
verdict (memory BIOs, or trio on loopback), not a look at our own state.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadgen.engine.certs import CertificateError, ClientCertificate, ContextCache, load_into
from loadgen.gateway.pki import (
    PrivateKey,
    issue_client_cert,
    issue_server_cert,
    make_ca,
    new_key,
    write_cert,
    write_key,
)

PASSWORD = "s3cret-key-pw"


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    cert: Path  # user "alice"
    key: Path
    cert_and_key: Path
    encrypted_key: Path
    p12: Path  # password PASSWORD, with the CA as chain
    p12_noext: Path
    other_key: Path


def _pem_key(key: PrivateKey, password: str | None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if password is None
        else serialization.BestAvailableEncryption(password.encode())
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _make_pki(d: Path) -> Pki:
    ca_cert, ca_key = make_ca("test client CA")
    server, server_key = issue_server_cert(ca_cert, ca_key)
    cert, key = issue_client_cert(ca_cert, ca_key, "alice")
    pki = Pki(
        dir=d,
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        cert=d / "alice.pem",
        key=d / "alice.key",
        cert_and_key=d / "alice-both.pem",
        encrypted_key=d / "alice-enc.key",
        p12=d / "alice.p12",
        p12_noext=d / "alice-bundle",
        other_key=d / "other.key",
    )
    write_cert(pki.ca, ca_cert)
    write_cert(pki.server_cert, server)
    write_key(pki.server_key, server_key)
    write_cert(pki.cert, cert)
    write_key(pki.key, key)
    pki.cert_and_key.write_bytes(pki.cert.read_bytes() + pki.key.read_bytes())
    pki.encrypted_key.write_bytes(_pem_key(key, PASSWORD))
    bundle = pkcs12.serialize_key_and_certificates(
        b"alice", key, cert, [ca_cert], serialization.BestAvailableEncryption(PASSWORD.encode())
    )
    pki.p12.write_bytes(bundle)
    pki.p12_noext.write_bytes(bundle)
    write_key(pki.other_key, new_key())
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _make_pki(tmp_path_factory.mktemp("pki"))


def _server_ctx(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(pki.ca))
    return ctx


def _client_ctx(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


def _presented_cn(pki: Pki, client_ctx: ssl.SSLContext) -> str:
    """The CN of the client certificate a CERT_REQUIRED server accepted (memory BIOs)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = _server_ctx(pki).wrap_bio(s_in, s_out, server_side=True)
    for _ in range(20):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        # TLS 1.3: the server checks the client's certificate after the client is done
        try:
            server.do_handshake()
        except ssl.SSLWantReadError:
            continue
        der = server.getpeercert(binary_form=True)
        assert der is not None
        cert = x509.load_der_x509_certificate(der)
        return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    raise AssertionError("handshake did not finish")


def _loaded(pki: Pki, cert: ClientCertificate) -> str:
    ctx = _client_ctx(pki)
    load_into(ctx, cert)
    return _presented_cn(pki, ctx)


# -- loading -------------------------------------------------------------------------


def test_pem_with_separate_key(pki: Pki) -> None:
    assert _loaded(pki, ClientCertificate(str(pki.cert), str(pki.key))) == "alice"


def test_pem_with_the_key_in_the_certificate_file(pki: Pki) -> None:
    assert _loaded(pki, ClientCertificate(str(pki.cert_and_key))) == "alice"


def test_pem_encrypted_key_with_its_password(pki: Pki) -> None:
    cert = ClientCertificate(str(pki.cert), str(pki.encrypted_key), PASSWORD)
    assert _loaded(pki, cert) == "alice"


def test_a_password_for_an_unencrypted_key_is_ignored(pki: Pki) -> None:
    assert _loaded(pki, ClientCertificate(str(pki.cert), str(pki.key), PASSWORD)) == "alice"


@pytest.mark.parametrize("name", ["p12", "p12_noext"])
def test_pkcs12_with_password(pki: Pki, name: str) -> None:
    # by extension, and by content (a DER SEQUENCE without a PEM marker)
    assert _loaded(pki, ClientCertificate(str(getattr(pki, name)), None, PASSWORD)) == "alice"


def _error(cert: ClientCertificate) -> CertificateError:
    with pytest.raises(CertificateError) as info:
        load_into(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert)
    message = str(info.value)
    assert "wrong-" not in message and PASSWORD not in message
    # no chained library exception that could carry more than the message
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__
    return info.value


def test_pem_wrong_password(pki: Pki) -> None:
    err = _error(ClientCertificate(str(pki.cert), str(pki.encrypted_key), "wrong-pw"))
    assert "wrong key password" in str(err) and str(pki.encrypted_key) in str(err)


def test_pem_encrypted_key_without_password_never_prompts(pki: Pki) -> None:
    err = _error(ClientCertificate(str(pki.cert), str(pki.encrypted_key)))
    assert "encrypted" in str(err)


def test_pkcs12_wrong_password(pki: Pki) -> None:
    err = _error(ClientCertificate(str(pki.p12), None, "wrong-pw"))
    assert "wrong key password" in str(err) and str(pki.p12) in str(err)


def test_pkcs12_refuses_a_separate_key(pki: Pki) -> None:
    assert "PKCS#12" in str(_error(ClientCertificate(str(pki.p12), str(pki.key), PASSWORD)))


def test_pem_key_that_does_not_match(pki: Pki) -> None:
    err = _error(ClientCertificate(str(pki.cert), str(pki.other_key)))
    assert "does not match" in str(err)


def test_pkcs12_without_a_key(pki: Pki, tmp_path: Path) -> None:
    # (cryptography refuses to write a bundle whose key does not match: not tested here)
    leaf = x509.load_pem_x509_certificate(pki.cert.read_bytes())
    bundle = pkcs12.serialize_key_and_certificates(
        b"x", None, leaf, None, serialization.BestAvailableEncryption(PASSWORD.encode())
    )
    path = tmp_path / "nokey.p12"
    path.write_bytes(bundle)
    assert "no private key" in str(_error(ClientCertificate(str(path), None, PASSWORD)))


def test_missing_files(pki: Pki) -> None:
    assert "cannot read" in str(_error(ClientCertificate(str(pki.dir / "nope.pem"))))
    err = _error(ClientCertificate(str(pki.cert), str(pki.dir / "nope.key")))
    assert "nope.key" in str(err)


def test_certificate_without_key_and_key_as_certificate(pki: Pki) -> None:
    assert "private key" in str(_error(ClientCertificate(str(pki.cert))))
    assert "certificate" in str(_error(ClientCertificate(str(pki.key), str(pki.key))))


def test_neither_pem_nor_pkcs12(tmp_path: Path) -> None:
    path = tmp_path / "cert.txt"
    path.write_bytes(b"hello")
    assert "neither PEM nor PKCS#12" in str(_error(ClientCertificate(str(path))))


def test_a_huge_file_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.pem"
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + b"A" * (2 << 20))
    assert "larger than" in str(_error(ClientCertificate(str(path))))


def test_repr_hides_the_key_password() -> None:
    cert = ClientCertificate("a.p12", None, PASSWORD)
    assert PASSWORD not in repr(cert) and "a.p12" in repr(cert)


_GARBAGE_NAMES = ("g.pem", "g.p12", "g.pfx", "g")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=600).map(lambda b: b"\x30" + b),
        st.binary(max_size=600).map(lambda b: b"-----BEGIN CERTIFICATE-----\n" + b),
        st.binary(max_size=600).map(lambda b: b"-----BEGIN PRIVATE KEY-----\n" + b),
    ),
    name=st.sampled_from(_GARBAGE_NAMES),
    password=st.one_of(st.none(), st.text(max_size=20)),
    separate_key=st.booleans(),
)
def test_garbage_raises_only_certificate_error(
    data: bytes, name: str, password: str | None, separate_key: bool
) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        key = str(path) if separate_key else None
        try:
            load_into(
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ClientCertificate(str(path), key, password)
            )
        except CertificateError as exc:
            assert not password or len(password) < 4 or password not in str(exc)


# -- the staged PKCS#12 file ---------------------------------------------------------


class _SpyContext(ssl.SSLContext):
    """Records the mode of each file OpenSSL is asked to load, while it exists."""

    modes: list[int]

    def load_cert_chain(self, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
        self.modes.append(stat.S_IMODE(os.stat(certfile).st_mode))
        super().load_cert_chain(certfile, keyfile, password)


def _spy() -> _SpyContext:
    ctx = _SpyContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.modes = []
    return ctx


def test_pkcs12_staging_file_is_private_and_removed(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    ctx = _spy()
    load_into(ctx, ClientCertificate(str(pki.p12), None, PASSWORD))
    assert ctx.modes == [0o600]
    assert list(staging.iterdir()) == []


def test_pkcs12_staging_file_is_removed_after_a_failure(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))

    class Refusing(_SpyContext):
        def load_cert_chain(self, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
            assert list(staging.iterdir()) != []
            raise ssl.SSLError(1, "refused")

    ctx = Refusing(ssl.PROTOCOL_TLS_CLIENT)
    with pytest.raises(CertificateError):
        load_into(ctx, ClientCertificate(str(pki.p12), None, PASSWORD))
    assert list(staging.iterdir()) == []


def test_staged_key_is_encrypted(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []

    class Reading(_SpyContext):
        def load_cert_chain(self, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
            seen.append(Path(certfile).read_bytes())
            super().load_cert_chain(certfile, keyfile, password)

    ctx = Reading(ssl.PROTOCOL_TLS_CLIENT)
    ctx.modes = []
    load_into(ctx, ClientCertificate(str(pki.p12), None, PASSWORD))
    assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in seen[0]
    assert seen[0].count(b"-----BEGIN CERTIFICATE-----") == 2  # leaf + the CA chain


# -- the cache -----------------------------------------------------------------------


class _Builds:
    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.count = 0

    def __call__(self) -> ssl.SSLContext:
        self.count += 1
        return _client_ctx(self.pki)


def _users(pki: Pki, n: int) -> list[ClientCertificate]:
    # the same files with different (ignored) passwords: different identities to the cache
    return [ClientCertificate(str(pki.cert), str(pki.key), f"pw{i}") for i in range(n)]


def test_cache_shares_one_context_per_identity(pki: Pki) -> None:
    build = _Builds(pki)
    cache = ContextCache(build)
    a = cache.get(ClientCertificate(str(pki.cert), str(pki.key)))
    assert cache.get(ClientCertificate(str(pki.cert), str(pki.key))) is a  # equal, not same
    assert build.count == 1 and cache.size == 1
    b = cache.get(ClientCertificate(str(pki.cert_and_key)))
    assert b is not a and cache.size == 2 and build.count == 2
    assert _presented_cn(pki, a) == "alice"


def test_cache_base_context_built_once_and_without_certificate(pki: Pki) -> None:
    build = _Builds(pki)
    cache = ContextCache(build)
    base = cache.get(None)
    assert cache.get(None) is base and build.count == 1 and cache.size == 0
    with pytest.raises(ssl.SSLError):
        _presented_cn(pki, base)  # the server requires a certificate


def test_cache_lru_bound_and_evictions(pki: Pki) -> None:
    build = _Builds(pki)
    cache = ContextCache(build, max_entries=2)
    a, b, c = _users(pki, 3)
    ctx_a, ctx_b = cache.get(a), cache.get(b)
    assert cache.get(a) is ctx_a  # a is now the most recent
    cache.get(c)  # evicts b, the least recently used
    assert cache.size == 2 and cache.evictions == 1
    assert cache.get(a) is ctx_a
    assert build.count == 3
    assert cache.get(b) is not ctx_b  # built again, evicting c
    assert build.count == 4 and cache.evictions == 2 and cache.size == 2


def test_cache_does_not_keep_failures(pki: Pki) -> None:
    build = _Builds(pki)
    cache = ContextCache(build)
    bad = ClientCertificate(str(pki.cert), str(pki.other_key))
    for _ in range(2):
        with pytest.raises(CertificateError):
            cache.get(bad)
    assert cache.size == 0 and build.count == 2


def test_cache_needs_room() -> None:
    with pytest.raises(ValueError):
        ContextCache(lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), max_entries=0)


# -- a real handshake on loopback ----------------------------------------------------


async def _serve_once(
    listener: trio.SocketListener, ctx: ssl.SSLContext, seen: list[str | BaseException]
) -> None:
    tcp = await listener.accept()
    stream = trio.SSLStream(tcp, ctx, server_side=True)
    try:
        await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
        assert der is not None
        cert = x509.load_der_x509_certificate(der)
        seen.append(str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value))
        await stream.send_all(b"ok")
    except (trio.BrokenResourceError, ssl.SSLError) as exc:
        seen.append(exc)
    finally:
        await trio.aclose_forcefully(stream)


async def _connect(port: int, ctx: ssl.SSLContext) -> bytes:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="127.0.0.1")
    try:
        await stream.do_handshake()
        return await stream.receive_some(10)
    finally:
        await trio.aclose_forcefully(stream)


async def test_tls_handshake_presents_the_cached_certificate(pki: Pki) -> None:
    cache = ContextCache(lambda: _client_ctx(pki))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    seen: list[str | BaseException] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_once, listeners[0], _server_ctx(pki), seen)
            got = await _connect(port, cache.get(ClientCertificate(str(pki.p12), None, PASSWORD)))
    assert got == b"ok" and seen == ["alice"]
    # without a certificate the same server refuses the client
    seen.clear()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_once, listeners[0], _server_ctx(pki), seen)
            with pytest.raises((ssl.SSLError, trio.BrokenResourceError)):
                await _connect(port, cache.get(None))
    assert len(seen) == 1 and isinstance(seen[0], BaseException)
    await listeners[0].aclose()
