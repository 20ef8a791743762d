"""``python -m loadgen.locust``: the ``--vpn-*`` options every VPN locustfile accepts.

Locust's own ``--help`` is printed before the locustfile is loaded, so it
cannot list them; this prints them with their defaults (the scenarios'
own options are in each scenario's docstring).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from loadgen.locust.settings import add_options

# keywords Locust's parser understands (web UI, environment) and argparse does not
_LOCUST_ONLY = ("env_var", "is_secret", "include_in_web_ui", "is_required", "is_multiple")


class _Parser(argparse.ArgumentParser):
    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        for key in _LOCUST_ONLY:
            kwargs.pop(key, None)
        return super().add_argument(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="locust -f scenarios/<scenario>.py",
        description="Options of every VPN locustfile (scenarios/*.py), next to Locust's own. "
        "Without --host the embedded reference gateway is the target.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_options(parser)
    parser.parse_args(["--help"] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["--help"]))
