"""The trust material of the listeners and the gateway client: certificate
chains, keys, CA bundles and CRLs, loaded and validated as one set before
they replace the set in force, and reloaded while the daemon runs."""
