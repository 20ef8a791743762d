"""Prometheus metric definitions: one place, one table of names and labels.

Labels come from small closed sets only (never user names, session ids or
addresses).  Each component builds its metrics on a registry it is given, so
several gateways or engines can live in one test process.
"""
