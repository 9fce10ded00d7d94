"""Fault tests: nemesis runs over real processes, fuzzed input, durability.

Each module here starts real node and router processes (``tests.integration``
harness) and throws faults at them; ``make test`` runs a short version of
each, ``make soak MINUTES=60`` runs the nemesis long (``tests.fault.soak``).
"""
