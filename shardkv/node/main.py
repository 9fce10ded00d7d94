"""Entry point of ``shardkv-node``: read the settings, set up logging, run the node.

``main(argv)`` returns the process's exit status: 0 after a clean stop
(SIGTERM or SIGINT), 2 when the node cannot start because of its settings,
data directory or listen address (one line on stderr saying what to change),
1 when the node fails while running. What a run does is in
``shardkv.node.process``; the settings are in docs/node-config.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from shardkv import logs
from shardkv.node.config import ConfigError, load_config
from shardkv.node.process import serve

__all__ = ["main"]

_PROGRAM = "shardkv-node"

# By its module's name even when run as ``python -m`` (where __name__ is "__main__").
_log = logging.getLogger("shardkv.node.main")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one node with ``argv`` (default: ``sys.argv[1:]``) and the process environment."""
    try:
        config = load_config(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        print(f"{_PROGRAM}: {exc}", file=sys.stderr)
        return 2
    # Every line of a node carries its id, so JSON logs of many nodes can be merged.
    logs.configure(config.log_level, config.log_format, fields={"node_id": config.node_id})
    try:
        return asyncio.run(serve(config))
    except ConfigError as exc:
        print(f"{_PROGRAM}: {exc}", file=sys.stderr)
        return 2
    except Exception:
        _log.exception("node %d failed", config.node_id)
        return 1


if __name__ == "__main__":
    sys.exit(main())
