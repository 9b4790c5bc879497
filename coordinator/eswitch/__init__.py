"""Eswitch backends: who owns the VF/SF functions and their representors."""
