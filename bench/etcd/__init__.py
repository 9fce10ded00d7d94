"""The etcd half of the side-by-side benchmark: etcd 3.4 run as a real 3-member cluster.

- ``EtcdCluster`` (``cluster``): starts and stops the ``etcd`` processes.
- ``EtcdClient`` (``client``): put, get and one-Txn ``put_many`` over grpc.aio.
- ``load``: etcd's own run of the closed-loop measurements, which live in
  ``bench.load`` (for any store).
- ``ensure_etcd`` (``install``): installs Debian's ``etcd-server`` if missing.
- The etcd API comes from ``shardkv.etcd`` (the protos of ``proto/shardkv/etcd``).

Errors are drawn in ``errors``. Import from the modules: the package
re-exports nothing, because ``load`` and ``install`` also run as
``python -m bench.etcd.…``, which warns when the package imported them first.
"""
