"""The benchmark harness (`make bench`, `python -m bench`).

Every headline is a ratio of two things measured in the same run on the
same machine: the daemon's real policy path against a raw `ovs-ofctl
--bundle` of the very same flows (the floor) and against OVN realising
the same policy as ACLs (the incumbent).
"""
