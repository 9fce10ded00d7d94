"""Integration tests: real ``shardkv-node`` processes on 127.0.0.1."""
