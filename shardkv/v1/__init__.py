"""Generated protocol (package shardkv.v1); do not edit; `make proto` regenerates it."""
