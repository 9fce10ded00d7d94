"""RocksDB storage: key encoding, Raft log and hard state per group, data, locks, snapshots."""
