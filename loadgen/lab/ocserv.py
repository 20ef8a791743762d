"""Run the real ocserv 1.1.6 (Debian) for interop tests, benchmarks and the ocserv lab,
only inside a private netns.

``OcservServer`` writes a harness-friendly config (protocol.md §8), starts
``ocserv -f`` in its own process group (a child of ``loadgen.lifecycle``), waits
until it listens, and tears the whole group down on exit.  It refuses to start
unless the current process is in a private network namespace
(``loadgen.lab.netns``): ocserv creates tun devices and owns an address pool,
which must never touch the host network.

What ocserv 1.1.6 needs here, found by experiment (the gotchas):

* The config directory must be traversable by ``run-as-user`` (0755): the
  workers run as that user and connect to sec-mod's socket files, which are
  named ``<socket-file>.<random>.<n>``; with a 0700 directory every login fails
  with "error connecting to sec-mod socket ... Permission denied" and the
  client sees the TLS connection cut.  Keys and the passwd file may stay 0600
  (main and sec-mod read them as root).
* ``user-profile`` with a relative name is opened relative to ocserv's cwd, so
  ocserv runs with cwd = the config dir ("error: cannot open file 'profile.xml'").
  An absolute path would leak into the profile URI (protocol.md §8).
* ``-d 0`` means "not given"; ``-d 1`` overrides the config's ``log-level``.  We
  only set ``log-level`` in the config.  Level 2 shows the lines of §9.1;
  "main: initialized ocserv" does not appear below level 2, so readiness is
  read from /proc/net/tcp (LISTEN socket) instead of the log.
* Unknown config keys are only a warning ("skipping unknown option"); the
  harness runs ``ocserv -t`` first and refuses such a config.
* With ``select-group`` the plain-auth user must be a member of the chosen
  group (passwd file ``user:group1,group2:hash``), or the login fails.
* SIGTERM makes main wait for sessions ("waiting for sessions to die", about
  1.5 s when idle); after a bounded wait the group gets SIGKILL.  sec-mod and
  the workers stay in main's process group, so ``killpg`` reaches them all.
* No ``chroot-dir``, ``isolate-workers = false`` (no seccomp surprises), and
  ``run-as-user = nobody`` / ``nogroup`` work as root here.

Authentication setups (``OcservConfig.auth``, rendered by ``loadgen.lab.ocserv_config``;
what ocserv sends for each is captured in tests/proto/vectors/ocserv_auth):

* The certificate modes get their own client CA (not the server's), made per
  start; ``issue_user_cert(cn)`` signs a user certificate with it.  The user
  name is the CN (``cert-user-oid = 2.5.4.3``); with certificate only, the CN
  need not be in the passwd file.  With ``certificate+plain`` the typed user
  name must equal the CN, checked only after the password (401).
* ``otp=`` points at a liboath users file that sec-mod (root) rewrites after
  every accepted code (counter, last OTP, time): a code is good once.
* A wrong password makes ocserv's plain module fail the rest of that auth
  session: the "Login failed." retry form rejects even the right password.
* ocserv copies ``banner`` / ``pre-login-banner`` into its XML unescaped.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography import x509

from loadgen.gateway.pki import (
    PrivateKey,
    ServerPki,
    issue_client_cert,
    make_ca,
    make_server_pki,
    write_cert,
    write_key,
)
from loadgen.lab.netns import in_private_netns
from loadgen.lab.ocserv_config import (
    AUTH_MODES,
    DEFAULT_PROFILE_XML,
    DEFAULT_TLS_PRIORITIES,
    AuthMode,
    OcservConfig,
    OcservPaths,
    group_name,
    otp_users_text,
    render_config,
    validate_config,
)
from loadgen.lifecycle import Child, ChildSpec, start_child

__all__ = [
    "AUTH_MODES",
    "DEFAULT_PROFILE_XML",
    "DEFAULT_TLS_PRIORITIES",
    "OPENCONNECT_TUN_SCRIPT",
    "AuthMode",
    "NotInPrivateNetnsError",
    "OcservConfig",
    "OcservError",
    "OcservServer",
    "OcservStartError",
    "free_port_pair",
    "group_name",
    "write_openconnect_script",
]

#: A --script for openconnect that only configures the tun device.  Never use
#: the default vpnc-script: it would install routes and DNS.  LOADGEN_TUN_PEER
#: (ocserv's side of the tunnel) comes from openconnect's environment.  Both
#: ends share one netns, so the peer address is also local (ocserv's vpnsN) and
#: the local table wins over this route; it documents intent and is harmless.
OPENCONNECT_TUN_SCRIPT = """\
#!/bin/sh
set -e
case "$reason" in
connect)
    ip addr add "$INTERNAL_IP4_ADDRESS/32" dev "$TUNDEV"
    ip link set "$TUNDEV" up
    if [ -n "$LOADGEN_TUN_PEER" ]; then
        ip route replace "$LOADGEN_TUN_PEER/32" dev "$TUNDEV"
    fi
    ;;
esac
exit 0
"""

_PROC_TIMEOUT_S = 10.0
_POLL_S = 0.05
# sun_path is 108 bytes; ocserv appends ".XXXXXXXX.N" to socket-file.
_MAX_SOCKET_PATH = 108 - 16
_TCP_LISTEN = "0A"


class OcservError(RuntimeError):
    """The ocserv harness failed."""


class NotInPrivateNetnsError(OcservError):
    """Refused: ocserv may only run inside a private network namespace."""


class OcservStartError(OcservError):
    """ocserv did not come up; the message carries the log tail."""


def _port_free(kind: socket.SocketKind, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(*, attempts: int = 50) -> tuple[int, int]:
    """A TCP port free on 127.0.0.1 whose number is also free for UDP: (tcp, udp)."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if _port_free(socket.SOCK_DGRAM, port):
            return port, port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", 0))
        return port, int(u.getsockname()[1])


def write_openconnect_script(path: Path) -> Path:
    """Write OPENCONNECT_TUN_SCRIPT to ``path`` (mode 0755) and return it."""
    path.write_text(OPENCONNECT_TUN_SCRIPT, encoding="ascii")
    path.chmod(0o755)
    return path


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _listening_tcp(port: int, pid: int) -> bool:
    """True if process ``pid`` owns a TCP socket listening on 127.0.0.1:``port``.

    /proc/net/tcp shows our namespace's sockets; reading it opens no connection
    (a probe connect would fork an ocserv worker and log an error), and matching
    the socket inode with the process's fds ignores anyone else on the port.
    """
    want = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text(encoding="ascii").splitlines()[1:]
    except OSError:
        return False
    listening = {
        fields[9]
        for fields in (line.split() for line in lines)
        if len(fields) > 9 and fields[1] == want and fields[3] == _TCP_LISTEN
    }
    return bool(listening & _socket_inodes(pid))


def _group_members(pgid: int) -> list[int]:
    members: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        # Fields after the ")" of comm: state ppid pgrp ...
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) > 2 and rest[0] != "Z" and int(rest[2]) == pgid:
            members.append(int(entry))
    return members


_RUNNING: set[OcservServer] = set()
_RUNNING_LOCK = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _RUNNING_LOCK:
        servers = list(_RUNNING)
    for server in servers:
        server.stop()


class OcservServer:
    """A running ocserv in its own process group, configured from an OcservConfig.

    Use as a context manager; ``stop()`` is idempotent and also runs at exit.
    """

    def __init__(
        self,
        config: OcservConfig | None = None,
        *,
        workdir: Path | None = None,
        start_timeout_s: float = 15.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self.config = config if config is not None else OcservConfig()
        self._own_workdir = workdir is None
        self._workdir_arg = workdir
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._proc: Child | None = None
        self._dir: Path | None = None
        self.pki: ServerPki | None = None
        self._client_ca: tuple[x509.Certificate, PrivateKey] | None = None
        self.tcp_port = 0
        self.udp_port: int | None = None

    # -- paths and facts -------------------------------------------------

    @property
    def directory(self) -> Path:
        if self._dir is None:
            raise OcservError("ocserv harness not started")
        return self._dir

    @property
    def config_path(self) -> Path:
        return self.directory / "ocserv.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "ocserv.log"

    @property
    def occtl_socket(self) -> Path:
        return self.directory / "occtl.sock"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.tcp_port}/"

    @property
    def ca_path(self) -> Path:
        return self._pki().ca_cert_path

    @property
    def cert_sha1_hex(self) -> str:
        return self._pki().sha1_hex

    @property
    def cert_pin_sha256(self) -> str:
        return self._pki().pin_sha256

    @property
    def tunnel_peer_ipv4(self) -> str:
        """ocserv's side of every tunnel: the first host of ``ipv4_network`` (seen: 10.77.0.1)."""
        return str(next(ipaddress.ip_network(self.config.ipv4_network).hosts()))

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def client_ca_path(self) -> Path:
        """The CA ocserv trusts for user certificates (certificate modes only)."""
        if self._client_ca is None:
            raise OcservError("no client CA: auth mode has no certificate")
        return self.directory / "pki" / "client-ca-cert.pem"

    @property
    def otp_path(self) -> Path | None:
        """The liboath users file (liboath rewrites it with the last counter used)."""
        return None if self.config.otp_users is None else self.directory / "users.otp"

    def issue_user_cert(self, cn: str) -> tuple[Path, Path]:
        """A client certificate for user ``cn`` (subject CN) signed by the client CA:
        (cert_path, key_path), PEM, the key unencrypted and 0600."""
        if self._client_ca is None:
            raise OcservError("no client CA: auth mode has no certificate")
        if not cn or "/" in cn or cn.startswith("."):
            raise OcservError(f"unusable common name for a file name: {cn!r}")
        ca_cert, ca_key = self._client_ca
        cert, key = issue_client_cert(ca_cert, ca_key, cn, key_type=self.config.key_type)
        users = self.directory / "users"
        users.mkdir(mode=0o700, exist_ok=True)
        cert_path, key_path = users / f"{cn}-cert.pem", users / f"{cn}-key.pem"
        write_cert(cert_path, cert)
        write_key(key_path, key)
        return cert_path, key_path

    def _paths(self) -> OcservPaths:
        pki = self._pki()
        return OcservPaths(
            directory=self.directory,
            passwd=self.directory / "passwd",
            server_cert=pki.server_cert_path,
            server_key=pki.server_key_path,
            occtl_socket=self.occtl_socket,
            otp=self.otp_path,
            client_ca=None if self._client_ca is None else self.client_ca_path,
        )

    def _pki(self) -> ServerPki:
        if self.pki is None:
            raise OcservError("ocserv harness not started")
        return self.pki

    # -- lifecycle -------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Write the config, start ocserv and wait (bounded) until it listens."""
        # The network safety guard: checked before anything is written or spawned.
        if not in_private_netns():
            raise NotInPrivateNetnsError(
                "refusing to start ocserv outside a private network namespace; "
                "call loadgen.lab.netns.enter_private_netns() first or run under `unshare -n`"
            )
        if self._proc is not None:
            raise OcservError("ocserv harness already started")
        for tool in ("ocserv", "ocpasswd", "occtl"):
            if shutil.which(tool) is None:
                raise OcservError(f"`{tool}` not found (Debian package ocserv)")
        if self._workdir_arg is None:
            self._dir = Path(tempfile.mkdtemp(prefix="ocserv-"))
        else:
            self._dir = self._workdir_arg
            self._dir.mkdir(parents=True, exist_ok=True)
        # Workers (run-as-user) must reach sec-mod's sockets in here (see module doc).
        self._dir.chmod(0o755)
        if len(str(self._dir / "ocserv.sock")) > _MAX_SOCKET_PATH:
            raise OcservError(f"work directory path too long for a unix socket: {self._dir}")
        try:
            self._prepare()
            self._spawn()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _prepare(self) -> None:
        cfg = self.config
        try:
            validate_config(cfg)
        except ValueError as exc:
            raise OcservError(str(exc)) from None
        self.pki = make_server_pki(self.directory / "pki", key_type=cfg.key_type)
        if cfg.uses_certificates:
            self._client_ca = make_ca("loadgen test client CA", key_type=cfg.key_type)
            write_cert(self.client_ca_path, self._client_ca[0])
            write_key(self.directory / "pki" / "client-ca-key.pem", self._client_ca[1])
        if cfg.tcp_port == 0 or cfg.udp_port == 0:
            tcp, udp = free_port_pair()
            self.tcp_port = cfg.tcp_port or tcp
            self.udp_port = None if cfg.udp_port is None else (cfg.udp_port or udp)
        else:
            self.tcp_port, self.udp_port = cfg.tcp_port, cfg.udp_port
        self._write_passwd()
        if cfg.otp_users is not None and self.otp_path is not None:
            # sec-mod (root) reads it and liboath rewrites it after each use
            fd = os.open(self.otp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(otp_users_text(cfg.otp_users))
        if cfg.profile_xml is not None:
            (self.directory / cfg.profile_name).write_text(cfg.profile_xml, encoding="utf-8")
        self.config_path.write_text(self.render_config(), encoding="utf-8")
        check = subprocess.run(
            ["ocserv", "-t", "-c", str(self.config_path)],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=_PROC_TIMEOUT_S,
            check=False,
        )
        output = check.stdout + check.stderr
        if check.returncode != 0 or "unknown option" in output:
            raise OcservStartError(f"ocserv -t rejected the config:\n{output}")

    def _write_passwd(self) -> None:
        cfg = self.config
        path = self.directory / "passwd"
        path.unlink(missing_ok=True)
        all_groups = [group_name(g) for g in cfg.groups]
        for user, password in cfg.users.items():
            groups = all_groups if cfg.user_groups is None else cfg.user_groups.get(user, [])
            argv = ["ocpasswd", "-c", str(path)]
            if groups:
                argv += ["-g", ",".join(groups)]
            # Without a tty ocpasswd reads the password once from stdin.
            proc = subprocess.run(
                [*argv, user],
                input=password + "\n",
                capture_output=True,
                text=True,
                timeout=_PROC_TIMEOUT_S,
                check=False,
            )
            if proc.returncode != 0:
                raise OcservError(f"ocpasswd failed for {user!r}: {proc.stderr.strip()}")

    def render_config(self) -> str:
        """The ocserv.conf text (after ports and paths are known)."""
        return render_config(
            self.config, self._paths(), tcp_port=self.tcp_port, udp_port=self.udp_port
        )

    def _spawn(self) -> None:
        env = dict(os.environ)
        env.update(self.config.env)
        with self.log_path.open("wb") as log:
            spec = ChildSpec(
                name="ocserv",
                argv=["ocserv", "-f", "-c", str(self.config_path)],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # sec-mod and the workers stay in main's group: the stop sweeps them
                new_session=True,
                # if the harness dies, ocserv gets SIGTERM (armed from the main thread only)
                pdeathsig=signal.SIGTERM,
                stop_grace_s=self.stop_timeout_s,
            )
            self._proc = start_child(spec)
        with _RUNNING_LOCK:
            _RUNNING.add(self)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise OcservStartError(
                    f"ocserv exited with status {code} during start-up; log tail:\n"
                    + self.log_tail()
                )
            if _listening_tcp(self.tcp_port, self._proc.pid) and self.occtl_socket.exists():
                return
            time.sleep(_POLL_S)
        raise OcservStartError(
            f"ocserv did not listen on 127.0.0.1:{self.tcp_port} within "
            f"{self.start_timeout_s} s; log tail:\n" + self.log_tail()
        )

    def stop(self) -> None:
        """SIGTERM, bounded wait, then SIGKILL to the whole process group; remove the dir."""
        proc = self._proc
        if proc is not None:
            pgid = proc.pid  # start_new_session: ocserv-main leads its own group
            # the lifecycle sweeps the group while main is unreaped (sec-mod or
            # workers may outlive it)
            proc.stop()
            deadline = time.monotonic() + self.stop_timeout_s
            while _group_members(pgid) and time.monotonic() < deadline:
                time.sleep(_POLL_S)
            with _RUNNING_LOCK:
                _RUNNING.discard(self)
            self._proc = None
        if self._own_workdir and self._dir is not None and self._dir.exists():
            shutil.rmtree(self._dir, ignore_errors=True)

    # -- observing -------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, substring: str, timeout_s: float = 10.0, *, since: int = 0) -> int:
        """Wait until ``substring`` appears in the log at or after offset ``since``.

        Returns the offset just past the match (pass it as ``since`` to wait for
        the next occurrence).  Raises TimeoutError with the log tail.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.log_text()
            index = text.find(substring, since)
            if index >= 0:
                return index + len(substring)
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{substring!r} not in the ocserv log within {timeout_s} s; log tail:\n"
                    + self.log_tail()
                )
            time.sleep(_POLL_S)

    def occtl_text(self, *args: str, timeout_s: float = _PROC_TIMEOUT_S) -> str:
        """Run ``occtl -s SOCK ARGS`` and return its standard output."""
        proc = subprocess.run(
            ["occtl", "-s", str(self.occtl_socket), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if proc.returncode != 0:
            raise OcservError(f"occtl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def occtl(self, *args: str, timeout_s: float = _PROC_TIMEOUT_S) -> Any:
        """Run ``occtl -j -s SOCK ARGS`` and return the parsed JSON."""
        out = self.occtl_text("-j", *args, timeout_s=timeout_s)
        try:
            return json.loads(out)
        except json.JSONDecodeError as exc:
            raise OcservError(f"occtl {' '.join(args)} printed no JSON: {out[:500]!r}") from exc
