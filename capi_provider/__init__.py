"""Cluster API infrastructure provider for bare-metal servers."""

__version__ = "0.1.0"
