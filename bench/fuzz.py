"""The long form of the suite's generated-input tests (``tests/test_fuzz.py``): many
Schemathesis examples per operation of the admin and tenant API, and thousands of mutated
audio files, against SQLite and, given ``--postgres``, PostgreSQL. Zero 5xx, no hang.

    python -m bench.fuzz [--examples 500] [--postgres postgresql+asyncpg://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500, help="per operation (default 500)")
    parser.add_argument("--postgres", help="a PostgreSQL server the suite may create databases on")
    args = parser.parse_args()
    env = {**os.environ, "EARMARK_FUZZ_EXAMPLES": str(args.examples)}
    if args.postgres:
        env["EARMARK_TEST_POSTGRES_URL"] = args.postgres
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"]
    sys.exit(subprocess.call(command, env=env))


if __name__ == "__main__":
    main()
