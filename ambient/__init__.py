"""ambient-node: the `ambient` command and the pieces every component shares."""

__version__ = "0.1.0"
