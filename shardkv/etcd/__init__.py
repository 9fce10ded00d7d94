"""Generated protocol: etcd's v3 gRPC API (packages etcdserverpb, mvccpb, authpb).

Wire-compatible with etcd v3.5 (see proto/shardkv/etcd/*.proto for what is
included); do not edit; `make proto` regenerates it.
"""
