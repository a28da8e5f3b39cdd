"""The local lab: a real management cluster built from source, virtual BMCs and simulated hosts.

Nothing here ships in the provider image; tests, `make demo`, `make lab-up` and the benchmarks use it.
"""
