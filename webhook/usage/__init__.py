"""Observed proxy usage: samples from a file, Prometheus or the metrics API, kept per
workload and summarised for sizing."""
