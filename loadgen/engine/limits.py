"""Local limits of a load generator: file descriptors and source addresses.

A session holds one TCP socket (the CSTP tunnel) and, with DTLS, one UDP
socket, so ``RLIMIT_NOFILE`` caps the sessions of one process.  We raise the
soft limit to the hard one at start-up, and refuse a plan that cannot fit
before any traffic, naming the ``--processes`` count that would.

Running out of descriptors mid-run must back off, not crash (style.md,
principle 8); this module only prevents the foreseeable case.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = [
    "DEFAULT_PORTS_PER_SOURCE_IP",
    "CapacityError",
    "SourceIpPool",
    "check_capacity",
    "check_source_ports",
    "max_sessions_per_process",
    "parse_source_ips",
    "processes_needed",
    "raise_nofile_limit",
]

try:
    import resource
except ImportError:  # pragma: no cover - not on Linux or macOS
    resource = None  # type: ignore[assignment]

#: Linux's default ``net.ipv4.ip_local_port_range`` 32768-60999
DEFAULT_PORTS_PER_SOURCE_IP = 60999 - 32768 + 1
#: the most addresses one source specification may expand to
MAX_SOURCE_IPS = 65536

_Limits = tuple[int, int]


class CapacityError(ValueError):
    """The planned sessions cannot fit in this process or address pool."""


def _nr_open() -> int | None:
    """Linux's ceiling for RLIMIT_NOFILE when the hard limit is unlimited."""
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text().strip())
    except (OSError, ValueError):
        return None


def raise_nofile_limit(
    *,
    getrlimit: Callable[[int], _Limits] | None = None,
    setrlimit: Callable[[int, _Limits], None] | None = None,
) -> _Limits:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard) after.

    Never raises: where the limit cannot be read or changed, the current (or
    ``(-1, -1)`` if unknown) values come back and the capacity check decides.
    ``getrlimit``/``setrlimit`` default to the ``resource`` module's.
    """
    if resource is None:
        return (-1, -1)
    get = getrlimit if getrlimit is not None else resource.getrlimit
    put = setrlimit if setrlimit is not None else resource.setrlimit
    kind = resource.RLIMIT_NOFILE
    try:
        soft, hard = get(kind)
    except (OSError, ValueError):
        return (-1, -1)
    inf = resource.RLIM_INFINITY
    targets = [hard]
    if hard == inf:
        # An unlimited soft limit is refused on Linux above fs.nr_open.
        targets = [t for t in (_nr_open(), 1 << 20, 65536) if t is not None]
    for target in targets:
        if soft != inf and soft >= target:
            break
        try:
            put(kind, (target, hard))
        except (OSError, ValueError):
            continue
        break
    try:
        return get(kind)
    except (OSError, ValueError):
        return (soft, hard)


def max_sessions_per_process(*, dtls: bool, soft_limit: int, reserve: int = 64) -> int:
    """Sessions one process can hold under ``soft_limit`` descriptors.

    ``reserve`` covers stdin/out/err, the metrics listener, log files, trio's
    wake-up pipe and the short-lived second TCP connection a session opens to
    download its profile (phase 4)."""
    per_session = 2 if dtls else 1
    return max(0, (soft_limit - reserve) // per_session)


def processes_needed(sessions: int, *, dtls: bool, soft_limit: int, reserve: int = 64) -> int:
    """How many processes ``sessions`` need (0 when even one session cannot fit)."""
    per_process = max_sessions_per_process(dtls=dtls, soft_limit=soft_limit, reserve=reserve)
    if per_process == 0:
        return 0
    return max(1, math.ceil(sessions / per_process))


def check_capacity(sessions: int, *, dtls: bool, soft_limit: int, reserve: int = 64) -> None:
    """Raise CapacityError when ``sessions`` cannot fit in one process.

    ``soft_limit`` is RLIMIT_NOFILE's soft value after ``raise_nofile_limit``;
    a negative value (unlimited or unknown) passes."""
    if sessions < 0:
        raise ValueError(f"sessions must be >= 0, got {sessions}")
    if soft_limit < 0:
        return
    per_process = max_sessions_per_process(dtls=dtls, soft_limit=soft_limit, reserve=reserve)
    if sessions <= per_process:
        return
    sockets = "1 TCP + 1 UDP socket" if dtls else "1 TCP socket"
    needed = sessions * (2 if dtls else 1) + reserve
    head = (
        f"{sessions} sessions{' with DTLS' if dtls else ''} need {needed} file descriptors "
        f"({sockets} each, plus {reserve} reserved), but the soft RLIMIT_NOFILE of this "
        f"process is {soft_limit}"
    )
    if per_process == 0:
        raise CapacityError(f"{head}: not even one session fits; raise the limit (ulimit -n)")
    n = processes_needed(sessions, dtls=dtls, soft_limit=soft_limit, reserve=reserve)
    raise CapacityError(
        f"{head}. One process holds at most {per_process} sessions: use --processes {n} "
        f"(or raise the hard limit: ulimit -Hn, limits.conf, LimitNOFILE=)"
    )


def check_source_ports(
    sessions: int, *, source_ips: int, ports_per_ip: int = DEFAULT_PORTS_PER_SOURCE_IP
) -> None:
    """Raise CapacityError when ``sessions`` (all processes together, one
    gateway address) need more local ports than the source addresses have."""
    ips = max(1, source_ips)
    if sessions <= ips * ports_per_ip:
        return
    need = math.ceil(sessions / ports_per_ip)
    example = f" (e.g. 127.0.0.2-127.0.0.{need + 1})" if need <= 253 else ""
    raise CapacityError(
        f"{sessions} sessions need {sessions} local ports towards one gateway address, but "
        f"{ips} source address{'es' if ips > 1 else ''} give about {ips * ports_per_ip} "
        f"({ports_per_ip} ephemeral ports each); give at least {need} source addresses{example}"
    )


# -- source addresses -------------------------------------------------------------

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str, spec: str) -> _Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"bad source address {text.strip()!r} in {spec!r}") from None


def _expand(item: str, spec: str) -> list[_Address]:
    if "/" in item:
        try:
            net = ipaddress.ip_network(item, strict=True)
        except ValueError as exc:
            raise ValueError(f"bad source network {item!r} in {spec!r}: {exc}") from None
        if net.num_addresses > MAX_SOURCE_IPS + 2:
            raise ValueError(f"source network {item!r} is larger than {MAX_SOURCE_IPS} addresses")
        # hosts() leaves out the network and broadcast addresses (not for /31, /32)
        return list(net.hosts())
    if "-" in item:
        lo_text, _, hi_text = item.partition("-")
        lo, hi = _address(lo_text, spec), _address(hi_text, spec)
        if lo.version != hi.version or int(hi) < int(lo):
            raise ValueError(f"bad source range {item!r} in {spec!r}: need LOW-HIGH, one family")
        if int(hi) - int(lo) + 1 > MAX_SOURCE_IPS:
            raise ValueError(f"source range {item!r} is larger than {MAX_SOURCE_IPS} addresses")
        return [ipaddress.ip_address(i) for i in range(int(lo), int(hi) + 1)]
    return [_address(item, spec)]


def parse_source_ips(spec: str, *, allow_non_loopback: bool = False) -> list[_Address]:
    """Addresses from ``"127.0.0.2-127.0.0.200"``, ``"127.0.0.0/24"`` (without
    network and broadcast) or a comma list of those and single addresses;
    duplicates dropped, order kept, one address family.

    Non-loopback addresses are refused unless ``allow_non_loopback``: tests and
    defaults stay on 127.0.0.0/8 and ::1 (architecture.md, network safety).
    """
    out: dict[_Address, None] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        for addr in _expand(item, spec):
            out[addr] = None
            if len(out) > MAX_SOURCE_IPS:
                raise ValueError(f"{spec!r} gives more than {MAX_SOURCE_IPS} source addresses")
    addrs = list(out)
    if not addrs:
        raise ValueError(f"no source address in {spec!r}")
    if len({a.version for a in addrs}) > 1:
        raise ValueError(f"{spec!r} mixes IPv4 and IPv6; a gateway is reached by one family")
    if not allow_non_loopback:
        outside = [a for a in addrs if not a.is_loopback]
        if outside:
            raise ValueError(
                f"source address {outside[0]} is not loopback (127.0.0.0/8 or ::1); "
                "pass allow_non_loopback (the CLI's explicit opt-in) to use it"
            )
    return addrs


class SourceIpPool:
    """Source addresses handed out round-robin, one per session.

    Why: a TCP connection bound to a source address takes a local port from
    that address's ephemeral range (about 28,000 ports on Linux: 32768-60999),
    and every process of the run shares it.  One address therefore caps the
    sessions towards one gateway ``ip:port`` at about 28k; N addresses give
    N times that.  On Linux every 127.x.y.z is local, so loopback tests need
    no configuration.  ``start`` offsets the rotation (use the process index)
    so processes spread over the addresses evenly.
    """

    def __init__(self, addresses: Sequence[_Address | str], *, start: int = 0) -> None:
        if not addresses:
            raise ValueError("a source address pool needs at least one address")
        self.addresses = [str(a) for a in addresses]
        self._next = start % len(self.addresses)

    def __len__(self) -> int:
        return len(self.addresses)

    def next(self) -> str:
        addr = self.addresses[self._next]
        self._next = (self._next + 1) % len(self.addresses)
        return addr

    def __iter__(self) -> Iterator[str]:
        """Endless round-robin: bound the loop that consumes it."""
        while True:
            yield self.next()
