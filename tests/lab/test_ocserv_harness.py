"""Tests of the interop lab itself (loadgen.lab): netns guard, PKI, ocserv + the real
openconnect."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from loadgen.gateway.pki import make_server_pki
from loadgen.lab import ocserv as ocserv_mod
from loadgen.lab.netns import can_create_netns, enter_private_netns, in_private_netns
from loadgen.lab.ocserv import (
    DEFAULT_PROFILE_XML,
    NotInPrivateNetnsError,
    OcservConfig,
    OcservError,
    OcservServer,
    OcservStartError,
    write_openconnect_script,
)
from loadgen.lab.ocserv_config import OcservPaths, otp_users_text, render_config, validate_config

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 30.0

# Runs in a fresh interpreter: what does a process that did nothing special see?
_GUARD_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from loadgen.lab.netns import in_private_netns
from loadgen.lab.ocserv import NotInPrivateNetnsError, OcservServer
print("private" if in_private_netns() else "host")
if sys.argv[2] == "start":
    try:
        OcservServer().start()
    except NotInPrivateNetnsError:
        print("refused")
    else:
        print("STARTED")
"""


def _probe(argv_prefix: list[str], action: str) -> list[str]:
    proc = subprocess.run(
        [*argv_prefix, sys.executable, "-c", _GUARD_PROBE, str(REPO_ROOT), action],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


# -- netns guard (the refusal itself is covered with a fake /proc below) ---


@pytest.mark.skipif(not can_create_netns(), reason="needs root and `ip`")
def test_unshare_child_is_private() -> None:
    assert _probe(["unshare", "-n"], "check") == ["private"]


def _fake_proc(root: Path, *, own_ns: str, pid1_ns: str | None, ancestors: list[str]) -> str:
    """A fake /proc: ns files that share an inode (hard links) share a namespace."""
    namespaces: dict[str, Path] = {}

    def ns_file(name: str) -> Path:
        if name not in namespaces:
            namespaces[name] = root / f"ns-{name}"
            namespaces[name].write_text(name)
        return namespaces[name]

    chain = ["self", *[str(100 + i) for i in range(len(ancestors))], "1"]
    ns_of = [own_ns, *ancestors]
    for i, pid in enumerate(chain[:-1]):
        (root / pid / "ns").mkdir(parents=True)
        os.link(ns_file(ns_of[i]), root / pid / "ns" / "net")
        (root / pid / "status").write_text(f"Name:\tx\nPPid:\t{chain[i + 1]}\n")
    (root / "1" / "ns").mkdir(parents=True)
    if pid1_ns is not None:
        os.link(ns_file(pid1_ns), root / "1" / "ns" / "net")
    return str(root)


@pytest.mark.parametrize(
    ("own", "pid1", "ancestors", "expected"),
    [
        ("host", "host", [], False),
        ("priv", "host", [], True),
        # PID 1 unreadable (this VM): the oldest readable ancestor decides.
        ("host", None, ["host", "host"], False),
        ("priv", None, ["host"], True),
        ("priv", None, ["priv", "host"], True),  # a shell inside `unshare -n`
        ("priv", None, ["priv"], False),  # no evidence of the host: fail closed
        ("priv", None, [], False),
    ],
)
def test_in_private_netns_logic(
    tmp_path: Path, own: str, pid1: str | None, ancestors: list[str], expected: bool
) -> None:
    proc = _fake_proc(tmp_path, own_ns=own, pid1_ns=pid1, ancestors=ancestors)
    assert in_private_netns(proc_root=proc) is expected


def test_guard_refuses_before_touching_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(ocserv_mod, "in_private_netns", lambda: False)
    workdir = tmp_path / "never"
    server = OcservServer(workdir=workdir)
    with pytest.raises(NotInPrivateNetnsError):
        server.start()
    assert not workdir.exists()
    assert server.pid is None


# -- PKI -----------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["rsa", "ecdsa"])
def test_pki_server_cert_is_signed_for_loopback(tmp_path: Path, key_type: Any) -> None:
    pki = make_server_pki(tmp_path, key_type=key_type)
    ca = x509.load_pem_x509_certificate(pki.ca_cert_path.read_bytes())
    cert = x509.load_pem_x509_certificate(pki.server_cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert cert.issuer == ca.subject
    ca_key = ca.public_key()
    assert cert.signature_hash_algorithm is not None
    if isinstance(ca_key, rsa.RSAPublicKey):
        ca_key.verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PKCS1v15(),
            cert.signature_hash_algorithm,
        )
    else:
        assert isinstance(ca_key, ec.EllipticCurvePublicKey)
        ca_key.verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )
    der = cert.public_bytes(serialization.Encoding.DER)
    assert pki.sha1_hex == hashlib.sha1(der).hexdigest().upper()
    assert pki.pin_sha256.startswith("pin-sha256:")
    assert len(base64.b64decode(pki.pin_sha256.removeprefix("pin-sha256:"))) == 32
    assert pki.server_key_path.stat().st_mode & 0o077 == 0
    # The key on disk belongs to the certificate.
    key = serialization.load_pem_private_key(pki.server_key_path.read_bytes(), password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, spki) == (
        cert.public_key().public_bytes(serialization.Encoding.DER, spki)
    )


# -- real ocserv and openconnect (interop) ---------------------------------------

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("ocserv", "occtl", "ocpasswd", "openconnect")),
    reason="needs the Debian ocserv and openconnect packages",
)


@pytest.fixture(scope="module")
def private_netns() -> None:
    if in_private_netns():
        return
    if not can_create_netns():
        pytest.skip("interop tests need root to create a private network namespace")
    enter_private_netns()


@pytest.fixture
def lab(private_netns: None) -> Iterator[OcservServer]:
    cfg = OcservConfig(
        users={"alice": "test"},
        groups=["group1", "group2[Group Two]"],
        profile_xml=DEFAULT_PROFILE_XML,
    )
    with OcservServer(cfg) as server:
        yield server


def _openconnect(
    server: OcservServer, tmp_path: Path, *extra: str, password: str = "test"
) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp_path / "openconnect.log"
    script = write_openconnect_script(tmp_path / "tun-script.sh")
    env = dict(os.environ, LOADGEN_TUN_PEER=server.tunnel_peer_ipv4)
    argv = [
        "openconnect",
        "--protocol=anyconnect",
        "--user=alice",
        "--passwd-on-stdin",
        "--non-inter",
        f"--script={script}",
        "-v",
        *extra,
        server.url,
    ]
    with out.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    assert proc.stdin is not None
    proc.stdin.write(password.encode() + b"\n")
    proc.stdin.close()
    return proc, out


def _wait_output(proc: subprocess.Popen[bytes], out: Path, needle: str) -> str:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        text = out.read_text(errors="replace")
        if needle in text:
            return text
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    text = out.read_text(errors="replace")
    pytest.fail(f"openconnect never printed {needle!r} (rc={proc.poll()}):\n{text[-4000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=10)


def _wait_user(server: OcservServer, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for user in server.occtl("show", "users"):
            if user["Username"] == name and user.get("DTLS cipher"):
                return dict(user)
        time.sleep(0.1)
    pytest.fail(f"occtl never showed {name} with DTLS: {server.occtl('show', 'users')}")


@pytest.mark.interop
@needs_tools
def test_real_openconnect_connects_with_dtls(lab: OcservServer, tmp_path: Path) -> None:
    assert in_private_netns()
    proc, out = _openconnect(
        lab, tmp_path, f"--cafile={lab.ca_path}", "--authgroup=Group Two", "--interface=lgtun0"
    )
    try:
        text = _wait_output(proc, out, "Established DTLS connection")
        # webvpnc carries the server certificate's SHA-1 (sh:) and the profile (fu:).
        assert f"sh:{lab.cert_sha1_hex}" in text
        assert "fu:profiles%2Fprofile.xml" in text
        user = _wait_user(lab, "alice")
        assert user["Groupname"] == "group2"
        assert user["State"] == "connected"
        vpn_ip = ipaddress.ip_address(user["IPv4"])
        assert vpn_ip in ipaddress.ip_network(lab.config.ipv4_network)
        assert user["P-t-P IPv4"] == lab.tunnel_peer_ipv4
        lab.wait_for_log("user logged in")
        # The script gave the tun device its address (inside the netns only).
        addr = subprocess.run(
            ["ip", "-o", "-4", "addr", "show", "dev", "lgtun0"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        assert f"{vpn_ip}/32" in addr
    finally:
        rc = _stop(proc)
    assert rc == 0, out.read_text(errors="replace")[-2000:]
    assert "Send BYE packet" in out.read_text(errors="replace")
    lab.wait_for_log("user disconnected (reason: user disconnected")


@pytest.mark.interop
@needs_tools
def test_openconnect_accepts_the_pins(lab: OcservServer, tmp_path: Path) -> None:
    # A bare hex SHA-1 is the certificate's; openconnect's "sha1:" prefix would mean the SPKI's.
    for pin in (lab.cert_pin_sha256, lab.cert_sha1_hex.lower()):
        proc, out = _openconnect(
            lab, tmp_path, "--authenticate", "--authgroup=group1", f"--servercert={pin}"
        )
        assert proc.wait(timeout=WAIT_S) == 0, out.read_text(errors="replace")[-2000:]
        assert "COOKIE=" in out.read_text(errors="replace")
    wrong = "pin-sha256:" + base64.b64encode(bytes(32)).decode()
    proc, out = _openconnect(
        lab, tmp_path, "--authenticate", "--authgroup=group1", f"--servercert={wrong}"
    )
    assert proc.wait(timeout=WAIT_S) != 0
    assert "COOKIE=" not in out.read_text(errors="replace")


@pytest.mark.interop
@needs_tools
def test_stop_leaves_no_ocserv_process(private_netns: None) -> None:
    with OcservServer(OcservConfig(udp_port=None)) as server:
        pgid = server.pid
        assert pgid is not None
        assert "udp-port" not in server.config_path.read_text()
        assert len(ocserv_mod._group_members(pgid)) >= 2  # main + sec-mod
        directory = server.directory
    assert ocserv_mod._group_members(pgid) == []
    assert not directory.exists()


@pytest.mark.interop
@needs_tools
def test_unknown_config_key_is_refused(private_netns: None) -> None:
    server = OcservServer(OcservConfig(extra_lines=["no-such-option = 1"]))
    with pytest.raises(OcservStartError, match="no-such-option"):
        server.start()
    assert server.pid is None


@pytest.mark.interop
@needs_tools
def test_start_failure_reports_the_log(private_netns: None) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = OcservServer(OcservConfig(tcp_port=port, udp_port=None), start_timeout_s=10)
        with pytest.raises(OcservStartError, match="log tail"):
            server.start()
    assert server.pid is None


@pytest.mark.interop
@needs_tools
def test_ocserv_lab_script_runs_the_command(private_netns: None) -> None:
    # Already in a private netns here, so the script does not re-exec itself.
    check = (
        'case "$LOADGEN_LAB_URL" in https://127.0.0.1:*/) ;; *) exit 90;; esac; '
        'test -s "$LOADGEN_LAB_CA" || exit 91; '
        'echo "$LOADGEN_LAB_PASSWORD" | openconnect --authenticate --non-inter '
        '--user="$LOADGEN_LAB_USER" --passwd-on-stdin --authgroup="Group Two" '
        '--cafile="$LOADGEN_LAB_CA" "$LOADGEN_LAB_URL" >/dev/null 2>&1 || exit 92; '
        'occtl -s "$LOADGEN_LAB_OCCTL_SOCKET" show status >/dev/null || exit 93; '
        "exit 7"
    )
    lab = [sys.executable, str(REPO_ROOT / "scripts" / "ocserv-lab"), "--user", "bob:s3cret"]
    proc = subprocess.run(
        [*lab, "--", "sh", "-c", check],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 7, proc.stderr
    assert "ocserv-lab: ocserv at https://127.0.0.1:" in proc.stderr


# -- authentication setups (config rendering, then the real ocserv) ---------------


def _paths(root: Path, *, otp: bool = False, client_ca: bool = False) -> OcservPaths:
    return OcservPaths(
        directory=root,
        passwd=root / "passwd",
        server_cert=root / "server-cert.pem",
        server_key=root / "server-key.pem",
        occtl_socket=root / "occtl.sock",
        otp=root / "users.otp" if otp else None,
        client_ca=root / "client-ca.pem" if client_ca else None,
    )


def _auth_part(text: str) -> list[str]:
    keys = ("auth", "enable-auth", "ca-cert", "cert-user-oid")
    return [line for line in text.splitlines() if line.split(" =", 1)[0] in keys]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("plain", ['auth = "plain[passwd=/w/passwd]"']),
        (
            "certificate",
            ['auth = "certificate"', "ca-cert = /w/client-ca.pem", "cert-user-oid = 2.5.4.3"],
        ),
        (
            "certificate+plain",
            [
                'auth = "certificate"',
                'auth = "plain[passwd=/w/passwd]"',
                "ca-cert = /w/client-ca.pem",
                "cert-user-oid = 2.5.4.3",
            ],
        ),
        (
            "plain|certificate",
            [
                'auth = "plain[passwd=/w/passwd]"',
                'enable-auth = "certificate"',
                "ca-cert = /w/client-ca.pem",
                "cert-user-oid = 2.5.4.3",
            ],
        ),
    ],
)
def test_auth_modes_render(mode: Any, expected: list[str]) -> None:
    cfg = OcservConfig(auth=mode)
    text = render_config(cfg, _paths(Path("/w"), client_ca=True), tcp_port=1, udp_port=None)
    assert _auth_part(text) == expected
    assert "banner" not in text


def test_certificate_mode_needs_a_client_ca() -> None:
    with pytest.raises(ValueError, match="client CA"):
        render_config(OcservConfig(auth="certificate"), _paths(Path("/w")), tcp_port=1, udp_port=1)


def test_otp_users_file_and_plain_option() -> None:
    secret = "3132333435363738393031323334353637383930"
    cfg = OcservConfig(otp_users={"alice": secret.upper()})
    text = render_config(cfg, _paths(Path("/w"), otp=True), tcp_port=1, udp_port=None)
    assert 'auth = "plain[passwd=/w/passwd,otp=/w/users.otp]"' in text
    assert otp_users_text({"alice": secret.upper()}) == f"HOTP\talice\t-\t{secret}\n"


def test_banners_are_written_raw() -> None:
    cfg = OcservConfig(banner="Use <ctrl-c> to quit", pre_login_banner="Terms & Conditions apply")
    text = render_config(cfg, _paths(Path("/w")), tcp_port=1, udp_port=None)
    assert 'banner = "Use <ctrl-c> to quit"\n' in text
    assert 'pre-login-banner = "Terms & Conditions apply"\n' in text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"auth": "radius"}, "auth must be one of"),
        ({"auth": "certificate", "otp_users": {"alice": "00"}}, "plain auth mode"),
        ({"otp_users": {"two words": "00"}}, "one word"),
        ({"banner": "two\nlines"}, "one line"),
        ({"pre_login_banner": 'say "hi"'}, "double quotes"),
        ({"profile_name": "../x.xml"}, "relative"),
    ],
)
def test_validate_refuses_configs_that_mean_something_else(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        validate_config(OcservConfig(**changes))


def test_a_bad_otp_secret_is_not_echoed() -> None:
    with pytest.raises(ValueError) as info:
        validate_config(OcservConfig(otp_users={"alice": "not-hex-s3cret"}))
    assert "s3cret" not in str(info.value)
    assert "alice" in str(info.value)


def test_public_names_still_import_from_the_harness_module() -> None:
    from loadgen.lab import ocserv_config

    for name in ("OcservConfig", "DEFAULT_PROFILE_XML", "DEFAULT_TLS_PRIORITIES", "group_name"):
        assert getattr(ocserv_mod, name) is getattr(ocserv_config, name)
    assert set(ocserv_config.AUTH_MODES) == {
        "plain",
        "certificate",
        "certificate+plain",
        "plain|certificate",
    }


@pytest.mark.interop
@needs_tools
@pytest.mark.parametrize(
    ("mode", "method"),
    [
        ("plain", "plain"),
        ("certificate", "certificate"),
        ("certificate+plain", "certificate+plain"),
        ("plain|certificate", "plain"),
    ],
)
def test_each_auth_mode_parses_and_starts(private_netns: None, mode: Any, method: str) -> None:
    cfg = OcservConfig(
        auth=mode,
        udp_port=None,
        banner="Use <ctrl-c> to quit",
        pre_login_banner="Terms & Conditions apply",
        otp_users={"alice": "3132"} if "plain" in mode else None,
    )
    with OcservServer(cfg) as server:  # start() runs `ocserv -t` and refuses warnings
        server.wait_for_log(f"setting '{method}' as primary authentication method")
        if mode == "plain|certificate":
            assert 'enable-auth = "certificate"' in server.config_path.read_text()
        if cfg.uses_certificates:
            ca = x509.load_pem_x509_certificate(server.client_ca_path.read_bytes())
            cert_path, key_path = server.issue_user_cert("carol")
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            assert cert.issuer == ca.subject
            cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
            assert cn == "carol"
            assert key_path.stat().st_mode & 0o077 == 0
            # the client CA is not the one that signed the server certificate
            assert server.client_ca_path != server.ca_path
        else:
            with pytest.raises(OcservError, match="no client CA"):
                server.issue_user_cert("carol")
        if cfg.otp_users is not None:
            assert server.otp_path is not None
            assert server.otp_path.read_text() == "HOTP\talice\t-\t3132\n"
        else:
            assert server.otp_path is None


@pytest.mark.interop
@needs_tools
def test_invalid_auth_config_is_refused_before_ocserv_runs(private_netns: None) -> None:
    server = OcservServer(OcservConfig(auth="certificate", otp_users={"alice": "00"}))
    with pytest.raises(OcservError, match="plain auth mode"):
        server.start()
    assert server.pid is None
