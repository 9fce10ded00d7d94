"""The shardkv router: the stateless gRPC front door, its client and CLI.

It owns the ring, the routing cache, the two-phase-commit coordinator and the
rebalancing planner. It talks to nodes only through gRPC and imports from
``shardkv`` only the pure pieces both sides must share exactly (ring function,
key encoding, generated protocol, error types). See docs/design.md.
"""

__all__: list[str] = []
