"""Delta xDS (``DeltaAggregatedResources``) serving Istio's workload API.

- :mod:`~controlplane.xds.core`: sans-IO server core (subscriptions, versions, ACK/NACK,
  removals, reconnects) and the push debouncer.
- :mod:`~controlplane.xds.server`: the thin gRPC shell and the hub of streams.
"""
