"""Gateway personalities by name: what ``loadgen gateway --personality`` chooses from.

``personality_for("ocserv")`` is the reference gateway's default and, for
now, the only one; ``base`` says what a personality is.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from loadgen.proto.personality.base import Personality
from loadgen.proto.personality.ocserv import OCSERV

__all__ = ["DEFAULT_PERSONALITY", "Personality", "personality_for", "personality_names"]

DEFAULT_PERSONALITY: Final = OCSERV.name
_REGISTRY: Final[Mapping[str, Personality]] = MappingProxyType({OCSERV.name: OCSERV})


def personality_names() -> tuple[str, ...]:
    """Every registered personality, sorted."""
    return tuple(sorted(_REGISTRY))


def personality_for(name: str) -> Personality:
    """The personality called ``name``; ValueError names the choices."""
    try:
        return _REGISTRY[name]
    except KeyError:
        choices = ", ".join(personality_names())
        raise ValueError(f"unknown personality {name!r} (choose from {choices})") from None
