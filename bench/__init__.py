"""Benchmarks: the Raft core, the node, and shardkv beside etcd."""
