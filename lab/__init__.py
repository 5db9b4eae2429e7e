"""The lab: a cluster of network namespaces on one machine, and its workload programs."""
