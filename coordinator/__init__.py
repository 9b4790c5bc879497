"""bluefield-coordinator: the DPU-side daemon that attaches sandbox VMs to the
BlueField eswitch and enforces their NetworkScope policy in Open vSwitch."""

__version__ = "0.1.0"

import warnings

# os-ken (the OpenFlow codec) depends on eventlet, which this daemon never
# uses; the `ovs` package under ovsdbapp merely probes whether eventlet has
# monkey-patched select, and importing it warns that eventlet is deprecated.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated", module="ovs.poller")
