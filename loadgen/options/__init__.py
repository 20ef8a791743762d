"""The client options: one declarative table, rendered into every front end.

``ClientOptions`` (``table``) is the table: one field per option, its
``Spec`` (``spec``: flag, help, converter, check, the front ends that show
it) in the field.  ``render`` puts it on the parsers of ``loadgen connect``
and ``loadgen run`` and on Locust's (``--vpn-*``), and reads every front
end's command line back through the same checks, so a value means the same
everywhere and a bad one is the same clear error, named as that front end
spells the option.  The engine turns a ``ClientOptions`` into the sessions'
configuration (``loadgen.engine.profile``); the Locust sidecar receives it
once per option set.

Pure: no trio, no sockets (the gevent side of Locust imports this package).
"""

from __future__ import annotations

from loadgen.options.render import (
    add_arguments,
    from_namespace,
    namespace_keys,
    secrets_env,
    to_argv,
)
from loadgen.options.spec import (
    LOCUST_PREFIX,
    MAX_ECHO_BYTES,
    MAX_ECHO_COUNT,
    MAX_SECONDS,
    MIN_ECHO_BYTES,
    Alias,
    Front,
    OptionError,
    Spec,
    dest_of,
    flag_of,
)
from loadgen.options.table import (
    DEFAULT_DTLS12_OFFER,
    DEFAULT_DTLS_OFFER,
    DEFAULT_USER_AGENT,
    DEFAULTS,
    ClientOptions,
    DownloadMode,
    default_of,
    specs,
)

__all__ = [
    "DEFAULTS",
    "DEFAULT_DTLS12_OFFER",
    "DEFAULT_DTLS_OFFER",
    "DEFAULT_USER_AGENT",
    "LOCUST_PREFIX",
    "MAX_ECHO_BYTES",
    "MAX_ECHO_COUNT",
    "MAX_SECONDS",
    "MIN_ECHO_BYTES",
    "Alias",
    "ClientOptions",
    "DownloadMode",
    "Front",
    "OptionError",
    "Spec",
    "add_arguments",
    "default_of",
    "dest_of",
    "flag_of",
    "from_namespace",
    "namespace_keys",
    "secrets_env",
    "specs",
    "to_argv",
]
