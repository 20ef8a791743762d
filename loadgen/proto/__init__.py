"""Sans-IO protocol core: bytes and ``now`` in, bytes and events out.

Nothing in this package may import trio, gevent, socket, ssl, time or asyncio
(``tests/proto/test_sans_io.py`` enforces it).
"""
