"""The waypoint and gateway process: Envoy and the telemetry exporter beside it."""
