"""Entry point of ``shardkv-node``: one node process. A placeholder until issue 3."""

import sys


def main() -> int:
    print("shardkv-node: not implemented yet: comes with issue 3", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
