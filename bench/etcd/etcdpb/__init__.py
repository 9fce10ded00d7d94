"""Generated from ``bench/proto/etcd`` by ``python -m bench.etcd.generate_proto``; never edited.

``rpc_pb2`` (package ``etcdserverpb``: KV.Range/Put/Txn, Maintenance.Status),
``rpc_pb2_grpc`` (the stubs) and ``kv_pb2`` (``mvccpb.KeyValue``).
"""
