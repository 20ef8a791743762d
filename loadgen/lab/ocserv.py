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
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from loadgen.gateway.pki import KeyType, ServerPki, make_server_pki
from loadgen.lab.netns import in_private_netns
from loadgen.lifecycle import Child, ChildSpec, start_child

__all__ = [
    "DEFAULT_PROFILE_XML",
    "DEFAULT_TLS_PRIORITIES",
    "OPENCONNECT_TUN_SCRIPT",
    "NotInPrivateNetnsError",
    "OcservConfig",
    "OcservError",
    "OcservServer",
    "OcservStartError",
    "free_port_pair",
    "group_name",
    "write_openconnect_script",
]

#: The Debian sample's priorities: TLS 1.2 only (cisco-client-compat would drop
#: TLS 1.3 from the default anyway, protocol.md §8); set explicitly so that a
#: GnuTLS system priority file cannot change what the tests see.
DEFAULT_TLS_PRIORITIES = (
    "NORMAL:%SERVER_PRECEDENCE:%COMPAT:-VERS-SSL3.0:-VERS-TLS1.0:-VERS-TLS1.1:-VERS-TLS1.3"
)

DEFAULT_PROFILE_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<AnyConnectProfile xmlns="http://schemas.xmlsoap.org/encoding/">
  <ServerList>
    <HostEntry>
      <HostName>loadgen-lab</HostName>
      <HostAddress>127.0.0.1</HostAddress>
    </HostEntry>
  </ServerList>
</AnyConnectProfile>
"""

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


def group_name(spec: str) -> str:
    """``"group2[Group Two]"`` -> ``"group2"`` (the name; the label is shown in the form)."""
    return spec.split("[", 1)[0].strip()


@dataclass(kw_only=True)
class OcservConfig:
    """What a test wants from ocserv; the rest is the harness-friendly §8 baseline."""

    #: 0 picks a free port (TCP and UDP get the same number when possible)
    tcp_port: int = 0
    #: None: no DTLS (no udp-port line); 0: pick a free port
    udp_port: int | None = 0
    #: user name -> password (plain auth)
    users: dict[str, str] = field(default_factory=lambda: {"alice": "test"})
    #: ``select-group`` entries, "name" or "name[Label]"; non-empty adds auto-select-group = false
    groups: list[str] = field(default_factory=list)
    #: user -> group names; None: every user is a member of every group in ``groups``
    user_groups: dict[str, list[str]] | None = None
    #: ``default-select-group`` label (a virtual entry that keeps the user's default group)
    default_group: str | None = None
    #: content of the user-profile file; None: no ``user-profile`` line
    profile_xml: str | None = None
    #: relative file name of the profile (protocol.md §8: never absolute)
    profile_name: str = "profile.xml"
    dpd_s: int = 90
    mobile_dpd_s: int = 1800
    keepalive_s: int = 32400
    cookie_timeout_s: int = 300
    persistent_cookies: bool = False
    switch_to_tcp_timeout_s: int = 25
    #: Same user, same tunnel IP.  With an AnyConnect-style downloader (a
    #: second TLS connection carrying the cookie) ocserv 1.1.6 opens a second
    #: session holding that IP; CONNECT's session then shares it with the
    #: dying one for a few ms and the first replies can go to the old tun.
    predictable_ips: bool = True
    #: sec-mod processes.  ocserv 1.1.6 starts one per core; with more than one,
    #: a session resumed by cookie on a new worker may report to the wrong
    #: instance ("session stats but with non-existing SID"), and a later
    #: DISCONNECT 0xb0 then only closes the session temporarily instead of
    #: invalidating the cookie (seen 2 runs in 3 here).  One keeps §5.4 exact.
    sec_mod_scale: int = 1
    auth_timeout_s: int = 240
    #: the tunnel address pool; it exists only inside the private netns
    ipv4_network: str = "10.77.0.0/16"
    tls_priorities: str = DEFAULT_TLS_PRIORITIES
    dtls_legacy: bool = True
    dtls_psk: bool = True
    #: ocserv log-level (0-9; 2 shows the §9.1 lines, 8 includes cookies)
    log_level: int = 2
    key_type: KeyType = "rsa"
    run_as_user: str = "nobody"
    run_as_group: str = "nogroup"
    #: raw config lines appended at the end (ocserv keeps the last value of a key)
    extra_lines: list[str] = field(default_factory=list)
    #: extra environment for ocserv (SSLKEYLOGFILE, GNUTLS_DEBUG_LEVEL, ...)
    env: dict[str, str] = field(default_factory=dict)


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
        self.pki = make_server_pki(self.directory / "pki", key_type=cfg.key_type)
        if cfg.tcp_port == 0 or cfg.udp_port == 0:
            tcp, udp = free_port_pair()
            self.tcp_port = cfg.tcp_port or tcp
            self.udp_port = None if cfg.udp_port is None else (cfg.udp_port or udp)
        else:
            self.tcp_port, self.udp_port = cfg.tcp_port, cfg.udp_port
        self._write_passwd()
        if cfg.profile_xml is not None:
            if "/" in cfg.profile_name:
                raise OcservError("profile_name must be a plain relative file name")
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
        cfg = self.config
        d = self.directory
        pki = self._pki()
        net = ipaddress.ip_network(cfg.ipv4_network)

        def yn(flag: bool) -> str:
            return "true" if flag else "false"

        lines = [
            f'auth = "plain[passwd={d / "passwd"}]"',
            "listen-host = 127.0.0.1",
            f"tcp-port = {self.tcp_port}",
        ]
        if self.udp_port is not None:
            lines.append(f"udp-port = {self.udp_port}")
        lines += [
            f"run-as-user = {cfg.run_as_user}",
            f"run-as-group = {cfg.run_as_group}",
            f"socket-file = {d / 'ocserv.sock'}",
            f"occtl-socket-file = {self.occtl_socket}",
            "use-occtl = true",
            f"pid-file = {d / 'ocserv.pid'}",
            f"server-cert = {pki.server_cert_path}",
            f"server-key = {pki.server_key_path}",
            # §8 harness-friendly baseline: no admission control, no banning.
            "isolate-workers = false",
            "max-clients = 0",
            "max-same-clients = 0",
            "rate-limit-ms = 0",
            "max-ban-score = 0",
            "cisco-client-compat = true",
            f"dtls-legacy = {yn(cfg.dtls_legacy)}",
            f"dtls-psk = {yn(cfg.dtls_psk)}",
            f"predictable-ips = {yn(cfg.predictable_ips)}",
            f"sec-mod-scale = {cfg.sec_mod_scale}",
            "try-mtu-discovery = false",
            f'tls-priorities = "{cfg.tls_priorities}"',
            f"auth-timeout = {cfg.auth_timeout_s}",
            f"cookie-timeout = {cfg.cookie_timeout_s}",
            f"persistent-cookies = {yn(cfg.persistent_cookies)}",
            f"dpd = {cfg.dpd_s}",
            f"mobile-dpd = {cfg.mobile_dpd_s}",
            f"keepalive = {cfg.keepalive_s}",
            f"switch-to-tcp-timeout = {cfg.switch_to_tcp_timeout_s}",
            f"log-level = {cfg.log_level}",
            "device = vpns",
            f"ipv4-network = {net.network_address}",
            f"ipv4-netmask = {net.netmask}",
            "ping-leases = false",
        ]
        for spec in cfg.groups:
            lines.append(f"select-group = {spec}")
        if cfg.default_group is not None:
            lines.append(f"default-select-group = {cfg.default_group}")
        if cfg.groups:
            lines.append("auto-select-group = false")
        if cfg.profile_xml is not None:
            # Relative on purpose: resolved against ocserv's cwd (the config dir).
            lines.append(f"user-profile = {cfg.profile_name}")
        lines += cfg.extra_lines
        return "\n".join(lines) + "\n"

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
