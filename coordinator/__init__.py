"""bluefield-coordinator: the DPU-side daemon that attaches sandbox VMs to the
BlueField eswitch and enforces their NetworkScope policy in Open vSwitch."""

__version__ = "0.1.0"
