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

from shardkv.node.config import ConfigError, load_config
from shardkv.node.process import serve

__all__ = ["main"]

_PROGRAM = "shardkv-node"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_log = logging.getLogger("shardkv.node")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one node with ``argv`` (default: ``sys.argv[1:]``) and the process environment."""
    try:
        config = load_config(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        print(f"{_PROGRAM}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, format=_LOG_FORMAT, stream=sys.stderr)
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
