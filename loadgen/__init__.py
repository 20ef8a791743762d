"""Load and chaos testing for AnyConnect-compatible SSL VPN gateways."""

__version__ = "0.1.0"
