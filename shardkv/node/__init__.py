"""The multi-raft runtime: hosts peers, ready loop with group commit, transport, gRPC services."""
