"""What a test wants from ocserv 1.1.6 (``OcservConfig``) and the ocserv.conf text
rendered from it (``render_config``): the harness-friendly baseline of
protocol.md §8 plus the authentication setups real gateways use.

The authentication modes (``OcservConfig.auth``), as ocserv 1.1.6 reads them
(src/config.c ``figure_auth_funcs``: several ``auth`` lines are AND-composed into
one method named ``a+b``; ``enable-auth`` lines are OR-composed alternatives):

* ``"plain"``: ``auth = "plain[passwd=FILE]"`` (plus ``otp=FILE`` with ``otp_users``);
* ``"certificate"``: ``auth = "certificate"``; the user name is the client
  certificate's CN (``cert-user-oid = 2.5.4.3``), no password is asked;
* ``"certificate+plain"``: both ``auth`` lines; a certificate *and* a password;
* ``"plain|certificate"``: plain, with ``enable-auth = "certificate"``: either.

The certificate modes add ``ca-cert`` (the harness makes a client CA) and
``cert-user-oid``.  ``banner`` and ``pre_login_banner`` go into the file exactly
as given, between double quotes, the way an operator writes them: ocserv
copies them into its XML without escaping, and that is what the tests look at.
"""

from __future__ import annotations

import binascii
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from loadgen.gateway.pki import KeyType

__all__ = [
    "AUTH_MODES",
    "CN_OID",
    "DEFAULT_PROFILE_XML",
    "DEFAULT_TLS_PRIORITIES",
    "AuthMode",
    "OcservConfig",
    "OcservPaths",
    "auth_lines",
    "group_name",
    "otp_users_text",
    "render_config",
    "validate_config",
]

AuthMode = Literal["plain", "certificate", "certificate+plain", "plain|certificate"]
AUTH_MODES: tuple[AuthMode, ...] = get_args(AuthMode)

#: the subject attribute ocserv reads the user name from (CN)
CN_OID = "2.5.4.3"

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
    #: how users log in (see the module doc)
    auth: AuthMode = "plain"
    #: user name -> password (plain auth)
    users: dict[str, str] = field(default_factory=lambda: {"alice": "test"})
    #: user -> HOTP secret (hex); adds ``otp=FILE`` to ``plain[...]`` (liboath users file)
    otp_users: dict[str, str] | None = None
    #: ``banner`` (shown after login), written verbatim between double quotes
    banner: str | None = None
    #: ``pre-login-banner`` (shown on the first form), written verbatim
    pre_login_banner: str | None = None
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

    @property
    def uses_certificates(self) -> bool:
        """True when a client certificate can (or must) log a user in."""
        return "certificate" in self.auth

    @property
    def uses_plain(self) -> bool:
        return "plain" in self.auth


@dataclass(frozen=True, kw_only=True)
class OcservPaths:
    """The files a rendered config points at (absolute, inside the work directory)."""

    directory: Path
    passwd: Path
    server_cert: Path
    server_key: Path
    occtl_socket: Path
    #: the liboath users file; None without ``otp_users``
    otp: Path | None = None
    #: the CA that signs user certificates; None without a certificate mode
    client_ca: Path | None = None


def validate_config(cfg: OcservConfig) -> None:
    """ValueError for settings that would render a config meaning something else."""
    if cfg.auth not in AUTH_MODES:
        raise ValueError(f"auth must be one of {AUTH_MODES}, not {cfg.auth!r}")
    if cfg.otp_users is not None and not cfg.uses_plain:
        raise ValueError("otp_users needs a plain auth mode (otp= is a plain[] option)")
    for user, secret in (cfg.otp_users or {}).items():
        if not user or any(c.isspace() for c in user):
            raise ValueError("an OTP user name must be one word")
        try:
            binascii.unhexlify(secret)
        except (binascii.Error, ValueError):
            # the secret itself stays out of the message
            raise ValueError(f"OTP secret of {user!r} is not hex") from None
    for name, text in (("banner", cfg.banner), ("pre_login_banner", cfg.pre_login_banner)):
        # One config line; a '"' would end the quoted value early.
        if text is not None and ("\n" in text or "\r" in text or '"' in text):
            raise ValueError(f"{name} must be one line without double quotes")
    if "/" in cfg.profile_name:
        raise ValueError("profile_name must be a plain relative file name")


def otp_users_text(otp_users: dict[str, str]) -> str:
    """The liboath users file: ``HOTP user - hexsecret`` (no PIN, counter 0)."""
    return "".join(f"HOTP\t{user}\t-\t{secret.lower()}\n" for user, secret in otp_users.items())


def auth_lines(cfg: OcservConfig, paths: OcservPaths) -> list[str]:
    """The ``auth``/``enable-auth``/certificate lines for ``cfg.auth``."""
    plain_opts = f"passwd={paths.passwd}"
    if paths.otp is not None:
        plain_opts += f",otp={paths.otp}"
    plain = f'"plain[{plain_opts}]"'
    lines = {
        "plain": [f"auth = {plain}"],
        "certificate": ['auth = "certificate"'],
        # Two auth lines are AND-composed (ocserv names the method "certificate+plain").
        "certificate+plain": ['auth = "certificate"', f"auth = {plain}"],
        "plain|certificate": [f"auth = {plain}", 'enable-auth = "certificate"'],
    }[cfg.auth]
    if cfg.uses_certificates:
        if paths.client_ca is None:
            raise ValueError(f"auth {cfg.auth!r} needs a client CA")
        lines += [f"ca-cert = {paths.client_ca}", f"cert-user-oid = {CN_OID}"]
    return lines


def render_config(
    cfg: OcservConfig, paths: OcservPaths, *, tcp_port: int, udp_port: int | None
) -> str:
    """The ocserv.conf text (after ports and paths are known)."""
    validate_config(cfg)
    d = paths.directory
    net = ipaddress.ip_network(cfg.ipv4_network)

    def yn(flag: bool) -> str:
        return "true" if flag else "false"

    lines = [
        *auth_lines(cfg, paths),
        "listen-host = 127.0.0.1",
        f"tcp-port = {tcp_port}",
    ]
    if udp_port is not None:
        lines.append(f"udp-port = {udp_port}")
    lines += [
        f"run-as-user = {cfg.run_as_user}",
        f"run-as-group = {cfg.run_as_group}",
        f"socket-file = {d / 'ocserv.sock'}",
        f"occtl-socket-file = {paths.occtl_socket}",
        "use-occtl = true",
        f"pid-file = {d / 'ocserv.pid'}",
        f"server-cert = {paths.server_cert}",
        f"server-key = {paths.server_key}",
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
    if cfg.banner is not None:
        lines.append(f'banner = "{cfg.banner}"')
    if cfg.pre_login_banner is not None:
        lines.append(f'pre-login-banner = "{cfg.pre_login_banner}"')
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
