"""Small helpers shared by the benchmarks: medians, a table printer, a machine line."""

from __future__ import annotations

import gc
import os
import platform
import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

from rich import box
from rich.console import Console
from rich.table import Table

__all__ = [
    "Column",
    "gc_paused",
    "machine_info",
    "median",
    "print_table",
]


def median(values: Sequence[float]) -> float:
    """The median; a benchmark figure on a shared, noisy machine is never a mean."""
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collect first, then keep the cyclic GC out of a timed section (as timeit does)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    model, aes = "unknown CPU", False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown CPU":
            model = " ".join(value.split())
        elif key in ("flags", "Features") and not aes:
            aes = "aes" in value.split()
    return f"{model} ({'AES-NI' if aes else 'no AES-NI flag'})"


def _openssl_version() -> str:
    try:
        from cryptography.hazmat.backends.openssl.backend import backend
    except ImportError:  # pragma: no cover - cryptography is a project dependency
        return "OpenSSL ?"
    return str(backend.openssl_version_text())


def machine_info() -> str:
    """One line: CPU, cores, load, Python, cryptography and OpenSSL versions."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{_cpu_model()}, {os.cpu_count()} CPUs, load {load}; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"cryptography {metadata.version('cryptography')}, {_openssl_version()}; "
        f"{platform.system()} {platform.release()} {platform.machine()}"
    )


@dataclass(frozen=True, kw_only=True)
class Column:
    title: str
    justify: Literal["left", "right"] = "left"


def print_table(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], *, console: Console | None = None
) -> None:
    """Print a Markdown-shaped table (rich's MARKDOWN box), so it pastes into a README as is.

    Never wrapped or truncated: wider than the terminal (or than 80 columns when piped)
    means the console is widened to fit.
    """
    table = Table(box=box.MARKDOWN, pad_edge=True, show_edge=True)
    for column in columns:
        table.add_column(column.title, justify=column.justify, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    console = console or Console()
    # measure without the console's own width limit, which would squash the columns
    needed = console.measure(table, options=console.options.update_width(1_000)).maximum
    if needed > console.width:
        console = Console(width=needed, file=console.file)
    console.print(table)
