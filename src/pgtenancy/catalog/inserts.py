"""What it takes to insert a row into each user table: its columns and their types, CHECK and foreign
key constraints, and every type's shape (enum labels, domain bases, range and array elements)."""

from __future__ import annotations

from typing import Final

from sqlalchemy import text

__all__ = ["COLUMNS", "CONSTRAINTS", "TABLES", "TYPES"]

TABLES: Final = text(
    """
    SELECT c.oid, n.nspname, c.relname
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg\\_%'
    """
)
COLUMNS: Final = text(
    """
    SELECT a.attrelid, a.attname, a.atttypid,
           (a.attnotnull OR t.typnotnull)
             AND NOT (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '' OR t.typdefault IS NOT NULL),
           a.attgenerated <> ''
      FROM pg_catalog.pg_attribute a
      JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
      JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg\\_%' AND a.attnum > 0 AND NOT a.attisdropped
     ORDER BY a.attrelid, a.attnum
    """
)
TYPES: Final = text(
    """
    SELECT t.oid, pg_catalog.format_type(t.oid, NULL), t.typtype, t.typcategory, t.typelem, t.typbasetype,
           COALESCE(r.rngsubtype, m.rngtypid, 0),
           ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid
                  ORDER BY e.enumsortorder),
           (SELECT count(*) FROM pg_catalog.pg_attribute a
             WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped)
      FROM pg_catalog.pg_type t
      LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid
      LEFT JOIN pg_catalog.pg_range m ON m.rngmultitypid = t.oid
     WHERE t.typtype <> 'c' OR t.typrelid IN (SELECT oid FROM pg_catalog.pg_class WHERE relkind = 'c')
    """
)
CONSTRAINTS: Final = text(
    """
    SELECT k.contype, k.conrelid, k.contypid, k.conname, k.confrelid,
           ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY c(attnum, ord)
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = c.attnum
                  ORDER BY c.ord),
           ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY c(attnum, ord)
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = c.attnum
                  ORDER BY c.ord)
      FROM pg_catalog.pg_constraint k
     WHERE k.contype = 'f' OR (k.contype = 'c' AND (k.conrelid <> 0 OR k.contypid <> 0))
    """
)
