"""The state machine: KV ops, per-key versions, dedup, 2PC participant, arc moves, meta."""
