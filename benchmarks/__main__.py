"""``python -m benchmarks [--quick] [--only NAME] [--json FILE]``: run the benchmarks, print ratios."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from benchmarks import asgi, binding, instructions, rls, seal
from benchmarks.harness import benchmark_database

SUITES = {"binding": binding, "instructions": instructions, "rls": rls, "asgi": asgi, "seal": seal}
DEFAULT = ("binding", "rls", "asgi", "seal")  # instructions (callgrind, several minutes) runs when named


async def _main(names: list[str], rounds: int, seconds: float) -> list[dict[str, object]]:
    rows = []
    for name in names:  # one database (and server) at a time: the harness uses fixed names
        suite = SUITES[name]
        with benchmark_database(suite.schema) as database:
            rows += [result.row() for result in await suite.run(database, rounds=rounds, seconds=seconds)]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (a smoke run)")
    parser.add_argument("--only", action="append", choices=sorted(SUITES), help="run only these suites")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    rounds, seconds = (2, 0.5) if args.quick else (6, 2.0)
    rows = asyncio.run(_main(args.only or list(DEFAULT), rounds, seconds))
    width = max(len(str(row["name"])) for row in rows)
    print(f"{'benchmark':<{width}}  ratio   baseline  candidate  unit")
    for row in rows:
        print(
            f"{row['name']:<{width}}  {row['ratio']:<6}  {row['baseline']:>8}  "
            f"{row['candidate']:>9}  {row['unit']}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
