"""Untrusted XML in, an element tree out: the one parser of aggregate-auth documents.

defusedxml with DTDs, entity declarations and external references forbidden,
after a size cap and under a depth cap; every failure becomes a
BadPacketError.  A document that is not well-formed gets one repair
(``_repair``: ocserv's unescaped banners) and one more strict parse.  The
top-level ``<opaque>`` element comes back as the exact bytes the peer sent,
because it must be echoed back unchanged (protocol.md §2.4, §2.5).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden
from defusedxml.ElementTree import DefusedXMLParser

from loadgen.proto.errors import BadPacketError

__all__ = ["MAX_BODY_BYTES", "MAX_DEPTH", "parse_config_auth_untrusted", "short"]

#: Real forms are a few hundred bytes; an ASA ``complete`` with manifests a few KiB.
MAX_BODY_BYTES = 256 * 1024
MAX_DEPTH = 32
#: Elements whose text ocserv writes unescaped (its banners, §2.4, §2.6).
_TEXT_ELEMENTS = (b"banner", b"pre-login-banner", b"message")
#: An ``&`` that starts no character or entity reference (ocserv's unescaped banners).
_BARE_AMP = re.compile(rb"&(?!#[0-9]{1,7};|#x[0-9A-Fa-f]{1,6};|[A-Za-z_][A-Za-z0-9._-]{0,31};)")


def short(text: str, limit: int = 60) -> str:
    """A peer's string, quoted and cut, for error messages."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


class _TooDeepError(Exception):
    """Raised from inside expat: the document nests deeper than MAX_DEPTH."""


class _Target:
    """TreeBuilder target that also notes where a top-level ``<opaque>`` starts."""

    def __init__(self) -> None:
        self._builder = TreeBuilder()
        self._depth = 0
        self.position: Callable[[], int] = lambda: -1
        self.opaque_at: int | None = None

    def start(self, tag: str, attrs: dict[str, str]) -> Element:
        if self._depth == 1 and tag == "opaque":
            self.opaque_at = self.position()
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _TooDeepError
        return self._builder.start(tag, attrs)

    def end(self, tag: str) -> Element:
        self._depth -= 1
        return self._builder.end(tag)

    def data(self, text: str) -> None:
        self._builder.data(text)

    def close(self) -> Element:
        return self._builder.close()


def _element_end(raw: bytes, start: int) -> int:
    """Index just past the element whose start tag begins at ``raw[start]``.

    Only called on a document expat has already accepted (well-formed, no DTD),
    so a small scanner that knows comments, CDATA, PIs and quoted attributes
    is exact.  Every step moves forward, so the loop is bounded by ``len(raw)``.
    """
    depth = 0
    pos = start
    while True:
        lt = raw.find(b"<", pos)
        if lt < 0:
            break
        for opener, closer in ((b"<!--", b"-->"), (b"<![CDATA[", b"]]>"), (b"<?", b"?>")):
            if raw.startswith(opener, lt):
                close = raw.find(closer, lt + len(opener))
                if close < 0:
                    raise BadPacketError("unterminated markup inside <opaque>")
                pos = close + len(closer)
                break
        else:
            gt, quote = lt + 1, 0
            while gt < len(raw) and (quote or raw[gt] != ord(">")):
                if raw[gt] in b"\"'":
                    quote = 0 if quote == raw[gt] else (quote or raw[gt])
                gt += 1
            if gt >= len(raw):
                break
            if raw[lt + 1] == ord("/"):
                depth -= 1
            elif raw[gt - 1] != ord("/"):
                depth += 1
            pos = gt + 1
            if depth <= 0:
                return pos
    raise BadPacketError("could not find the end of <opaque>")


def parse_config_auth_untrusted(body: bytes, what: str) -> tuple[Element, bytes | None]:
    """Parse with defusedxml; return the root and the raw top-level ``<opaque>``."""
    if not isinstance(body, bytes | bytearray):
        raise BadPacketError(f"{what}: expected bytes, got {type(body).__name__}")
    body = bytes(body)
    if len(body) > MAX_BODY_BYTES:
        raise BadPacketError(f"{what}: {len(body)} bytes exceed the {MAX_BODY_BYTES} byte cap")
    try:
        return _parse_once(body, what)
    except _MalformedError as exc:
        repaired = _repair(body)
        if repaired == body:
            raise BadPacketError(str(exc)) from None
        try:
            return _parse_once(repaired, what)
        except _MalformedError:
            raise BadPacketError(str(exc)) from None


class _MalformedError(Exception):
    """Not well-formed XML: the one failure a repair may cure."""


def _repair(body: bytes) -> bytes:
    """ocserv's unescaped banners made well-formed, as openconnect's parser recovers them.

    Only a bare ``&`` and the ``<``/``>`` inside the text elements ocserv fills
    from its configuration are escaped; nothing can add a DTD or an entity, so
    whatever the strict parse refused for safety stays refused.
    """
    repaired = _BARE_AMP.sub(b"&amp;", body)
    for tag in _TEXT_ELEMENTS:
        opener, closer = b"<" + tag + b">", b"</" + tag + b">"
        out: list[bytes] = []
        pos = 0
        while (start := repaired.find(opener, pos)) >= 0:
            inner = start + len(opener)
            end = repaired.find(closer, inner)
            if end < 0:
                break
            text = repaired[inner:end].replace(b"<", b"&lt;").replace(b">", b"&gt;")
            out += [repaired[pos:inner], text, closer]
            pos = end + len(closer)
        out.append(repaired[pos:])
        repaired = b"".join(out)
    return repaired


def _parse_once(body: bytes, what: str) -> tuple[Element, bytes | None]:
    target = _Target()
    # encoding="utf-8" overrides the declaration: byte offsets below are UTF-8
    # offsets, and the opaque bytes are pasted into our own UTF-8 replies.
    parser = DefusedXMLParser(
        target=target,
        encoding="utf-8",
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
    )
    expat = parser.parser
    target.position = lambda: int(expat.CurrentByteIndex)
    try:
        parser.feed(body)
        root = parser.close()
    except DTDForbidden as exc:
        raise BadPacketError(f"{what}: DTDs are forbidden (<!DOCTYPE> found)") from exc
    except EntitiesForbidden as exc:
        raise BadPacketError(f"{what}: entity declarations are forbidden") from exc
    except DefusedXmlException as exc:
        raise BadPacketError(f"{what}: forbidden XML construct ({type(exc).__name__})") from exc
    except _TooDeepError:
        raise BadPacketError(f"{what}: nested deeper than {MAX_DEPTH} elements") from None
    except ParseError as exc:
        raise _MalformedError(f"{what}: malformed XML ({exc})") from exc
    except (ValueError, LookupError, UnicodeError, RecursionError) as exc:
        raise BadPacketError(f"{what}: unparsable XML ({type(exc).__name__})") from exc
    if not isinstance(root, Element):
        raise BadPacketError(f"{what}: no root element")
    if root.tag != "config-auth":
        raise BadPacketError(f"{what}: root element is <{short(str(root.tag))}>, not <config-auth>")
    opaque = None
    if target.opaque_at is not None and target.opaque_at >= 0:
        opaque = body[target.opaque_at : _element_end(body, target.opaque_at)]
    return root, opaque
