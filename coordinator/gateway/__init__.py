"""The policy stream: the client the daemon runs against the control-plane
gateway, and the reference gateway shipped for the demo and the tests."""
