"""The reference gateway: an AnyConnect-compatible gateway with a tun-less data plane.

The embedded default target of ``loadgen run`` and the Locust scenarios, the
partner of the self-benchmarks, and a test fixture.  It never routes client
traffic anywhere: it answers ICMP echo and UDP echo for its own tunnel address.
"""
