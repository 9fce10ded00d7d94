"""python-etcd3 (PyPI ``etcd3``) against a router: run as a child process by test_etcd_api.

    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python python -m tests.integration.etcd3_client HOST:PORT

etcd3 0.12's generated code imports only with the pure-Python protobuf, hence
a process of its own. Prints ``ok`` when every step answered as etcd would;
an assertion otherwise.
"""

from __future__ import annotations

import sys

import etcd3  # type: ignore[import-untyped]


def main(address: str) -> None:
    host, port = address.rsplit(":", 1)
    client = etcd3.client(host=host, port=int(port), timeout=20)
    for n in range(8):
        client.put(f"/e3/{n}", f"v{n}")
    value, meta = client.get("/e3/3")
    assert value == b"v3" and meta.version == 1, (value, meta)
    listed = [(meta.key, value) for value, meta in client.get_prefix("/e3/")]
    assert listed == [(f"/e3/{n}".encode(), f"v{n}".encode()) for n in range(8)], listed
    succeeded, _ = client.transaction(
        compare=[
            client.transactions.value("/e3/0") == "v0",
            client.transactions.version("/e3/1") == 1,
        ],
        success=[
            client.transactions.put("/e3/0", "moved"),
            client.transactions.put("/e3/1", "too"),
        ],
        failure=[client.transactions.put("/e3/failed", "yes")],
    )
    assert succeeded
    assert client.get("/e3/0")[0] == b"moved" and client.get("/e3/1")[0] == b"too"
    assert client.get("/e3/failed")[0] is None
    assert client.replace("/e3/2", "v2", "replaced")
    assert not client.replace("/e3/2", "v2", "again"), "the value is no longer v2"
    assert client.delete("/e3/4")
    assert not client.delete("/e3/4")
    assert client.delete_prefix("/e3/").deleted == 7
    assert list(client.get_prefix("/e3/")) == []
    status = client.status()
    assert status.version == "3.5.0" and status.leader is not None
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1])
