"""``python -m benchmarks [--quick] [--json FILE]``: run every benchmark and print a table of ratios."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from benchmarks import binding
from benchmarks.harness import benchmark_database


async def _main(rounds: int, seconds: float) -> list[dict[str, object]]:
    with benchmark_database(binding.schema) as database:
        results = await binding.run(database, rounds=rounds, seconds=seconds)
    return [result.row() for result in results]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    rows = asyncio.run(_main(rounds=2 if args.quick else 6, seconds=0.5 if args.quick else 2.0))
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
