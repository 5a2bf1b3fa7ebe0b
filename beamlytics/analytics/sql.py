"""SQL over the data tables with DuckDB: the table is called `netlytics` (as in NetLytics) and by its own name.

One read-only SELECT, with DuckDB's access to files and the network off: a query reads the
tables it is given and nothing else, and can neither write nor delete anything.
"""
from __future__ import annotations

from typing import Mapping

import duckdb
import pyarrow as pa

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
