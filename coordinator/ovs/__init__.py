"""Adapters to Open vSwitch: OVSDB (ovsdbapp) and OpenFlow (os-ken's codec
on a persistent channel; ovs-ofctl to explain a mismatch)."""

from coordinator.ovs import json_parser, lean_imports

# Before any module of this package imports os-ken or ovs (see lean_imports
# and json_parser).
json_parser.use_distribution_parser()
lean_imports.prepare()
