"""Adapters to Open vSwitch: OVSDB (ovsdbapp) and OpenFlow (os-ken's codec
on a persistent channel; ovs-ofctl to explain a mismatch)."""

from coordinator.ovs import lean_imports

# Before any module of this package imports os-ken or ovs (see lean_imports).
lean_imports.prepare()
