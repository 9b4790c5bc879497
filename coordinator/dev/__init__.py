"""Development and test helpers: network namespaces, veth pairs and private Open vSwitch instances.

Nothing in this package is used by the daemon in production; it backs ``dev up`` and the test suite.
"""
