"""The interop lab: private network namespaces and the real ocserv, for the interop
tests, the benchmarks against ocserv and ``scripts/ocserv-lab``.

Nothing here runs unless asked: ocserv and its tun devices only ever start inside
a private network namespace (``loadgen.lab.netns``), and root is needed for that.
"""

__all__: list[str] = []
