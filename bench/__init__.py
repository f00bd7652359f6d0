"""Benchmarks: `sniffer watch` side by side with the designs it replaces or competes with.

One invocation (`python -m bench`, `make bench`; `--quick` for the smoke run) starts one
testbed (kube-apiserver + reference platform in a temporary directory) and, per scenario,
runs each system in turn on the same load, then writes bench/results/<timestamp>.{json,md}
and PNG plots. Nothing outside bench/ and tests/ imports it.
"""
