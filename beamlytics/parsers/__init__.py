"""Parsers: pure functions from log lines and packets to Arrow batches (no Beam)."""
