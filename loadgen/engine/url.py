"""Gateway URLs as users type them (``https://vpn.example.com/Engineering``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["GatewayUrl", "parse_gateway_url"]


@dataclass(frozen=True, kw_only=True)
class GatewayUrl:
    host: str
    port: int
    #: the URL as given; sent as ``<group-access>`` (ASA uses its path as group URL)
    url: str

    @property
    def host_header(self) -> str:
        """``Host`` as openconnect sends it: port omitted when 443 (§2.1)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"


def parse_gateway_url(text: str) -> GatewayUrl:
    """Parse ``https://host[:port][/path]``; a bare ``host[:port]`` means https."""
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    if parts.scheme != "https":
        raise ValueError(f"gateway URL must be https://, not {parts.scheme}://")
    if not parts.hostname:
        raise ValueError("gateway URL has no host")
    try:
        port = parts.port or 443
    except ValueError as exc:
        raise ValueError(f"bad port in gateway URL: {exc}") from exc
    path = parts.path or "/"
    url = f"https://{parts.netloc}{path}"
    return GatewayUrl(host=parts.hostname, port=port, url=url)
