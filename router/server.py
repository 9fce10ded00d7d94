"""Entry point of ``shardkv-router``: one router process. A placeholder until issue 4."""

import sys


def main() -> int:
    print("shardkv-router: not implemented yet: comes with issue 4", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
