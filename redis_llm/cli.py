"""The ``redis-llm`` command-line tool."""

import argparse
import sys

from redis_llm import module_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="redis-llm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("module-path", help="print the path of the Redis module to load")
    args = parser.parse_args(argv)
    if args.command == "module-path":
        try:
            print(module_path())
        except FileNotFoundError as exc:
            print(f"redis-llm: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
