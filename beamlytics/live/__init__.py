"""Live detection: sources that never end (a folder of rotating Zeek logs, Kafka topics), as plain classes.

Nothing here imports Beam: `transforms/live.py` wraps these classes in a splittable DoFn and
`pipelines/live.py` wires `detect --follow`.
"""
