"""Where a pipeline's results land (Parquet, per-tenant DuckDB views) and how they are queried."""

from stream.sinks.parquet import OutputSink, view_name
from stream.sinks.query import QueryError, QueryResult, check_query, run_query
from stream.sinks.views import tenant_connection

__all__ = ["OutputSink", "QueryError", "QueryResult", "check_query", "run_query", "tenant_connection",
           "view_name"]
