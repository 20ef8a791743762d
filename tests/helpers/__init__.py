"""Test infrastructure: private network namespaces, throw-away PKI, the real ocserv."""
