"""Entry point of ``shardkv``, the command-line client. A placeholder until issue 4."""

import sys


def main() -> int:
    print("shardkv: not implemented yet: comes with issue 4", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
