"""ztunnel's view of the mesh: workloads, services, policies, and lookups over them."""
