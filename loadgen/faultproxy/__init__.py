"""A Toxiproxy-compatible TCP and UDP fault proxy (``loadgen faultproxy``)."""
