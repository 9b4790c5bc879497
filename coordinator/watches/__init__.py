"""The background watches that keep the world converged while the daemon runs:
the switch (OVS restarts), the eswitch inventory, health transitions, and
hosts that never reconcile after a start."""
