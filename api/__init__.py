"""Protocol definitions shared by the control plane and ztunnel (see api/README.md)."""
