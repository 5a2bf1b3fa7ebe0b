"""NetLytics' analytics over the data tables, as plain functions on Arrow tables (no Beam)."""
