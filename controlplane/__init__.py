"""The control plane: CA, delta-xDS workload discovery, cluster sources."""

DEFAULT_EXCLUDED_NAMESPACES = ("kube-system", "istio-system")
"""As istio-cni's ``excludeNamespaces``: the cluster's own system pods and the mesh's.
The control plane and the node agents default to the same list (kept here, light to
import, for both command lines)."""
