"""Who may log in to the reference gateway, and how it behaves while they try.

The configuration of the server side of aggregate auth (protocol.md §2.3 to
§2.7), shared by every personality: what a login needs (``AuthMode``), users
and their groups, the groups and their aliases, the profile, the limits.
Passwords and OTP keys never appear in a repr.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from loadgen.proto.auth_xml import ProfileManifestEntry
from loadgen.proto.otp import OtpUser

__all__ = ["AuthMode", "AuthPolicy", "GroupSpec", "UserSpec"]

_SHA1_HEX = re.compile(r"[0-9A-Fa-f]{40}\Z")


class AuthMode(enum.StrEnum):
    """What a login needs, as ocserv's ``auth =`` lines combine them."""

    #: ``auth = "plain[passwd=...]"``: username, then password
    PASSWORD = "password"
    #: ``auth = "certificate"``: a client certificate chaining to the client CA; its CN is the user
    CERTIFICATE = "certificate"
    #: ``auth = "plain"`` + ``enable-auth = "certificate"``: both, the username being the CN
    CERTIFICATE_PASSWORD = "certificate+password"
    #: ``auth = "plain[passwd=...,otp=...]"``: password, then a one-time password
    PASSWORD_OTP = "password+otp"

    @property
    def needs_certificate(self) -> bool:
        return self in (AuthMode.CERTIFICATE, AuthMode.CERTIFICATE_PASSWORD)


@dataclass(frozen=True)
class GroupSpec:
    """ocserv's ``select-group = name[alias]`` (§2.4): value ``name``, label ``alias``."""

    name: str
    alias: str | None = None


@dataclass(frozen=True)
class UserSpec:
    """A ``plain`` auth user; ``groups`` None means any group."""

    password: str = field(repr=False)
    groups: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class AuthPolicy:
    """Who may log in, and how the gateway behaves while they try."""

    mode: AuthMode = AuthMode.PASSWORD
    #: None accepts any non-empty username with any password (the load-test mode)
    users: Mapping[str, UserSpec] | None = None
    #: PASSWORD_OTP: the tokens by user (ocserv's ``otp=`` file, ``loadgen.proto.otp``)
    otp_users: Mapping[str, OtpUser] | None = field(default=None, repr=False)
    groups: tuple[GroupSpec, ...] = ()
    #: the group listed first (selected); the first group when None
    default_group: str | None = None
    profile: ProfileManifestEntry | None = None
    #: SHA-1 (hex) of the server certificate DER, for ``webvpnc`` ``sh:`` (§2.6)
    server_cert_sha1: str | None = None
    banner: str | None = None
    #: ocserv MAX_PASSWORD_TRIES (§2.7)
    max_password_tries: int = 3
    #: this fraction of otherwise valid logins is refused (failure injection)
    reject_ratio: float = 0.0
    #: like ocserv's auth-timeout: a context's life from its first form
    context_ttl_s: float = 240.0
    #: contexts in progress at once; more answer 503
    max_pending: int = 16384

    def __post_init__(self) -> None:
        if self.users is not None:
            # a private read-only copy: the caller's dict may change later
            object.__setattr__(self, "users", MappingProxyType(dict(self.users)))
        if self.otp_users is not None:
            object.__setattr__(self, "otp_users", MappingProxyType(dict(self.otp_users)))
        if (self.mode is AuthMode.PASSWORD_OTP) != (self.otp_users is not None):
            raise ValueError("otp_users are given exactly when the mode is password+otp")
        names = [g.name for g in self.groups]
        folded = [n.casefold() for n in names]
        if any(not n for n in names) or len(set(folded)) != len(folded):
            raise ValueError("group names must be non-empty and unique (case-insensitively)")
        if self.default_group is not None and self.default_group not in names:
            raise ValueError(f"default_group {self.default_group!r} is not a configured group")
        for user, spec in (self.users or {}).items():
            unknown = set(spec.groups or ()) - set(names)
            if unknown:
                raise ValueError(f"user {user!r} names unknown groups {sorted(unknown)}")
        if self.max_password_tries < 1:
            raise ValueError("max_password_tries must be at least 1")
        if not 0.0 <= self.reject_ratio <= 1.0:
            raise ValueError("reject_ratio must be within [0, 1]")
        if not (math.isfinite(self.context_ttl_s) and self.context_ttl_s > 0):
            raise ValueError("context_ttl_s must be a positive number of seconds")
        if self.max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if self.server_cert_sha1 is not None and not _SHA1_HEX.match(self.server_cert_sha1):
            raise ValueError("server_cert_sha1 must be 40 hex digits")
        if self.profile is not None and not _SHA1_HEX.match(self.profile.sha1_hex):
            raise ValueError("profile.sha1_hex must be 40 hex digits")
