"""Kubernetes rendering of a plan: manifests (the entry point), workloads, routing, autoscaling, add-ons."""
