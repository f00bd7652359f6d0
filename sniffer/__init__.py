"""Sniffer's shared core: pod projection, state derivation, Kubernetes and platform clients."""
