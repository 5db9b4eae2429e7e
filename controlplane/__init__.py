"""The control plane: CA, delta-xDS workload discovery, cluster sources."""
