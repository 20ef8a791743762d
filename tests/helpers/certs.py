"""Throw-away PKI for tests: the project's one certificate builder, ``loadgen.gateway.pki``.

:func:`make_server_pki` writes a new CA and a loopback server certificate (RSA by
default, ECDSA with ``key_type="ecdsa"``; other names, a common name and a validity
window for tests of verification) and returns the paths and the pins; see
:mod:`loadgen.gateway.pki` for what the pins are.
"""

from __future__ import annotations

from loadgen.gateway.pki import KeyType, ServerPki, make_server_pki, spki_pin_sha256

__all__ = ["KeyType", "ServerPki", "make_server_pki", "spki_pin_sha256"]
