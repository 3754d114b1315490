"""Observability: Prometheus metrics whose names, labels and buckets are a contract with dashboards and alerts."""
