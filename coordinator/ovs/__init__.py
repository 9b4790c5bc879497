"""Adapters to Open vSwitch: OVSDB (ovsdbapp) and OpenFlow (ovs-ofctl)."""
