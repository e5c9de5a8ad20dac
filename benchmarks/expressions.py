"""How long the policy analysis takes: ``python -m benchmarks.expressions [--policies 1000]``.

Analyses ``--policies`` distinct expressions, in the form ``pg_get_expr`` prints them (the canonical
predicate, COALESCE and IS NULL fail-opens, CASE, an admin setting, IN lists, a policy function), each
made distinct by a constant so no cache is hit, and prints the total and the cost per policy. No database
is needed: the analysis reads only the printed text and the function definitions.
"""

from __future__ import annotations

import argparse
import time
import uuid

from pgtenancy.audit import expressions

CS = "current_setting('app.current_tenant_id'::text, true)"
P = "(NULLIF(" + CS + ", ''::text))::uuid"
FUNCTION = (
    "CREATE OR REPLACE FUNCTION public.tenant_ok(t uuid)\n RETURNS boolean\n LANGUAGE sql\n STABLE\n"
    "AS $function$ SELECT t = " + P + " OR body_flag() $function$\n"
)
FORMS = (
    "((tenant_id = ( SELECT " + P + ' AS "nullif")) AND (body <> {c}::text))',
    "((tenant_id = COALESCE((" + CS + ")::uuid, tenant_id)) AND (body <> {c}::text))",
    "(((tenant_id = (" + CS + ")::uuid) OR (" + CS + " IS NULL)) AND (body <> {c}::text))",
    "CASE WHEN (" + CS + " = ''::text) THEN (body <> {c}::text) ELSE (tenant_id = " + P + ") END",
    "((tenant_id = " + P + ") OR (current_setting('app.is_admin'::text, true) = {c}::text))",
    "(tenant_id = ANY (ARRAY[" + P + ", ({u})::uuid]))",
    "(public.tenant_ok(tenant_id) AND (body <> {c}::text))",
    "((tenant_id)::text = " + CS + ") AND (NOT (body = {c}::text))",
)


def policies(count: int) -> list[str]:
    """``count`` distinct printed expressions, cycling through the forms."""
    found = []
    for n in range(count):
        form = FORMS[n % len(FORMS)]
        found.append(form.format(c="'" + str(n) + "'", u="'" + str(uuid.UUID(int=n)) + "'"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.expressions")
    parser.add_argument("--policies", type=int, default=1000)
    args = parser.parse_args()
    resolve = {"public.tenant_ok": FUNCTION}.get
    texts = policies(args.policies)
    expressions.analyse("true", setting="app.current_tenant_id", column="tenant_id")  # import the parser
    for label in ("parsed and analysed", "analysed again (parse trees cached)"):
        started = time.perf_counter()
        verdicts = [
            expressions.analyse(t, setting="app.current_tenant_id", column="tenant_id", resolve=resolve)
            for t in texts
        ]
        took = time.perf_counter() - started
        bound = sum(v.bound for v in verdicts)
        print(
            f"{label}: {args.policies} policies in {took * 1000:.0f} ms "
            f"({took / args.policies * 1000:.2f} ms per policy); {bound} bound"
        )


if __name__ == "__main__":
    main()
