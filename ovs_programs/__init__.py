"""Data only: the OpenFlow pipeline (pipeline.yaml) and the named network
classes (network_classes.yaml). Installed as ``coordinator.programs``."""
