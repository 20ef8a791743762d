"""The ``--vpn-*`` options of a Locust run: the client option table, rendered for Locust.

Locust parses the options (``events.init_command_line_parser``) and forwards
them from the master to every worker with each spawn message; every process
reads them back through the table (``loadgen.options.from_namespace``) where
they are used, so a bad value is one clear error at start, never a failure
per user.  Only ``--prometheus-sd`` is Locust's own: it lists the sidecars of
a whole run, which only the run's owner knows.
"""

from __future__ import annotations

import logging
from typing import Any

from loadgen.engine.feeder import FeederError, load_credentials
from loadgen.options import (
    ClientOptions,
    Front,
    add_arguments,
    flag_of,
    from_namespace,
    namespace_keys,
)

__all__ = ["add_options", "check_files", "settings_for"]

log = logging.getLogger("loadgen.locust")

#: the names Locust keeps our options under, in its parsed options
_KEYS = namespace_keys(Front.LOCUST)


def add_options(parser: Any, **_kwargs: Any) -> None:
    add_arguments(parser, Front.LOCUST)
    parser.add_argument(
        "--prometheus-sd",
        default="",
        help="write a Prometheus file_sd JSON file listing every sidecar's metrics",
    )


#: options (the --vpn-* values) -> settings: users ask at every connect and echo
_CACHE: dict[tuple[Any, ...], ClientOptions] = {}
_CACHE_MAX = 64


def settings_for(options: Any) -> ClientOptions:
    """The client options in Locust's ``parsed_options``, read once per distinct set of
    values; OptionError (a ValueError) names the bad option."""
    key = tuple(getattr(options, k, None) for k in _KEYS)
    try:
        found = _CACHE.get(key)
    except TypeError:  # an unhashable value (a forwarded list): no caching
        return from_namespace(options, Front.LOCUST, warn=log.warning)
    if found is None:
        found = from_namespace(options, Front.LOCUST, warn=log.warning)
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = found
    return found


def check_files(settings: ClientOptions) -> None:
    """Read what the settings name (once, at start): ValueError with a clear message."""
    if settings.credentials:
        try:
            load_credentials(settings.credentials)  # an empty file is refused too
        except FeederError as exc:
            raise ValueError(f"{flag_of('credentials', Front.LOCUST)}: {exc}") from None
