"""Runnable pipelines and the `beamlytics` command line."""
