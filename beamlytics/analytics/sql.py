"""SQL over the data tables with DuckDB: the table is called `netlytics` (as in NetLytics) and by its own name.

One read-only SELECT, with DuckDB's access to files and the network off: a query reads the
tables it is given and nothing else, and can neither write nor delete anything.
"""
from __future__ import annotations

from typing import Mapping

import duckdb
import pyarrow as pa

from beamlytics import schemas

NETLYTICS_NAME = "netlytics"


class QueryError(ValueError):
    """The SQL could not run: DuckDB's reason, in one line."""


def run_query(sql: str, tables: Mapping[str, pa.Table]) -> pa.Table:
    """Run one SELECT over `tables` (name -> table); a single table is also reachable as `netlytics`."""
    connection = duckdb.connect(":memory:", config={"enable_external_access": False})
    try:
        for name, table in tables.items():
            connection.register(name, table)
        if len(tables) == 1 and NETLYTICS_NAME not in tables:
            connection.register(NETLYTICS_NAME, next(iter(tables.values())))
        try:
            statements = connection.extract_statements(sql)
            if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                raise QueryError("give exactly one SELECT statement (the query reads the table, never changes it)")
            return connection.sql(sql).to_arrow_table()
        except duckdb.Error as error:
            raise QueryError(" ".join(str(error).split())) from None
    finally:
        connection.close()


def check_row_query(sql: str, table: str) -> None:
    """Refuse (QueryError) a query that is not row by row or does not keep the table's columns.

    `detect --query` runs on each batch of records where it is read: only a query whose answer for
    a row depends on that row alone (a WHERE filter, computed columns) gives the same records
    however the input is cut. Aggregates, GROUP BY, DISTINCT, ORDER BY/LIMIT, window functions,
    subqueries and set operations depend on the batch and are refused.
    """
    import json

    connection = duckdb.connect(":memory:", config={"enable_external_access": False})
    try:
        try:
            tree = json.loads(connection.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
        except duckdb.Error as error:
            raise QueryError(" ".join(str(error).split())) from None
        if tree.get("error") or len(tree.get("statements", [])) != 1:
            raise QueryError(tree.get("error_message") or "give exactly one SELECT statement")
        aggregates = {name for (name,) in connection.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type = 'aggregate'").fetchall()}
        node = tree["statements"][0]["node"]
        if node.get("type") != "SELECT_NODE" or node.get("modifiers") or node.get("group_expressions") or \
                node.get("having") or any(_batch_dependent(part, aggregates) for part in _parts(node)):
            raise QueryError("a detect query runs row by row on the records (e.g. SELECT * FROM netlytics WHERE "
                             "...): no aggregate, GROUP BY, DISTINCT, ORDER BY, LIMIT, window or subquery")
    finally:
        connection.close()
    schema = schemas.TABLES[table]
    columns = run_query(sql, {table: schema.empty_table()}).schema.names
    if columns != schema.names:
        raise QueryError("a detect query must keep the table's columns in order (SELECT * ... or SELECT * "
                         "REPLACE (...)), got " + ", ".join(columns))


def _parts(node) -> list:
    """Every dict below `node` in DuckDB's serialised tree."""
    found, stack = [], [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _batch_dependent(part: dict, aggregates: set[str]) -> bool:
    kind = part.get("class")
    if kind in ("WINDOW", "SUBQUERY") or part.get("type") in ("SUBQUERY", "SET_OPERATION_NODE"):
        return True
    return kind == "FUNCTION" and part.get("function_name", "").lower() in aggregates


def query_batch(batch: pa.RecordBatch | pa.Table, sql: str, table: str) -> list[pa.RecordBatch]:
    """The rows `sql` (checked by `check_row_query`) keeps of one batch of `table`, in the table's schema."""
    records = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    result = run_query(sql, {table: records}).cast(schemas.TABLES[table])
    return [part for part in result.combine_chunks().to_batches() if part.num_rows]
