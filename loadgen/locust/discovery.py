"""The Prometheus file-based service discovery file of a Locust run (``--prometheus-sd``).

Every engine sidecar serves its metrics on a port of its own (the base port
plus its Locust worker index).  The process that owns the run (the local
runner or the master) learns each sidecar's address from a Locust message
and rewrites the file, which Prometheus re-reads by itself
(``file_sd_configs``).  Each write is atomic (a temporary file renamed), so
Prometheus never reads half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["MESSAGE_TYPE", "ServiceDiscoveryFile"]

#: the Locust message a worker sends its master when its sidecar serves metrics
MESSAGE_TYPE = "loadgen_metrics"


class ServiceDiscoveryFile:
    """Targets ``host:port`` by worker index, written as one file_sd target group each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._targets: dict[int, str] = {}

    @property
    def targets(self) -> dict[int, str]:
        return dict(self._targets)

    def add(self, worker: int, target: str) -> None:
        if self._targets.get(worker) == target:
            return
        self._targets[worker] = target
        self.write()

    def clear(self) -> None:
        """No target any more (the run is over): Prometheus stops scraping them."""
        self._targets.clear()
        self.write()

    def write(self) -> None:
        groups = [
            {"targets": [target], "labels": {"runner": "locust", "worker": str(worker)}}
            for worker, target in sorted(self._targets.items())
        ]
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(groups, f, indent=2)
                f.write("\n")
            os.chmod(tmp, 0o644)  # Prometheus may run as another user
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
