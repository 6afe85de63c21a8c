"""Benchmarks of the gateway against a bare pass-through proxy and Envoy: ``make bench``.

Everything runs on loopback and is started here: a fast upstream, Redis, the bare
aiohttp proxy (the Python floor), the gateway with each store, and Envoy when its binary
is installed. The proxy under test is pinned to one CPU, the load generator (with the
upstream and Redis) to the other, so the figures are ratios measured side by side.
"""
