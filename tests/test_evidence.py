"""The records detect keeps for its incident report: the tally's columns, in the inputs' order, removed after."""
import random

import pytest

from beamlytics import features, schemas
from beamlytics.report import evidence, incidents

MINUTE = 60_000_000
T0 = 1_714_521_600_000_000  # 2024-05-01T00:00:00Z


def random_batch(table: str, rng: random.Random, rows: int, source: str, first_pos: int):
    """Records of `table` with every column the tally could read filled, and some the tally never reads."""
    clients, servers = [f"10.0.0.{i}" for i in range(4)], [f"10.9.0.{i}" for i in range(5)]
    names = ["a.example.com", "b.example.com", "x.evil.test", "y.evil.test", None]
    time_column = schemas.EVENT_TIME_COLUMN[table]
    columns = {
        "c_ip": [rng.choice(clients) for _ in range(rows)],
        "s_ip": [rng.choice(servers) for _ in range(rows)],
        "s_port": [rng.choice([53, 80, 443, None]) for _ in range(rows)],
        features.NAME_COLUMN[table]: [rng.choice(names) for _ in range(rows)],
        time_column: [None if rng.random() < 0.05 else T0 + rng.randrange(10 * MINUTE) for _ in range(rows)],
        "source_tool": ["zeek"] * rows, "source_file": [source] * rows,
        "source_pos": list(range(first_pos, first_pos + rows)),
        "uid": [f"C{rng.randrange(10**6)}" for _ in range(rows)],
    }
    if table == "http":
        columns["user_agent"] = [rng.choice(["curl/8", "Mozilla/5.0", "evil-bot", None]) for _ in range(rows)]
    return schemas.batch_from_columns(schemas.TABLES[table], columns, rows)


def spans_for(spec: features.WindowSpec, keys):
    return [incidents.Span(spec.table, spec.key, key, T0 + start * MINUTE, T0 + end * MINUTE)
            for key in keys for start, end in ((0, 3), (5, 10))]


def tally_view(tallies, agents):
    return ([(t.records, dict(t.peers), dict(t.names), dict(t.ports), dict(t.agents), t.files,
              t.peers.full, t.names.full) for t in tallies],
            agents and ({agent: sorted(clients) for agent, clients in agents.clients.items()},
                        sorted(agents.all_clients)))


@pytest.mark.parametrize("table,key", [("dns", "c_ip"), ("dns", "s_ip"), ("dns", "domain"), ("dns", "name"),
                                       ("http", "c_ip"), ("http", "name"), ("named_flows", "s_ip")])
def test_the_kept_columns_tally_as_the_whole_records_do(tmp_path, table, key, monkeypatch):
    monkeypatch.setattr(incidents, "TRACKED_VALUES", 3)  # the bound's cut depends on record order too
    rng = random.Random(7)
    spec = features.WindowSpec(table, key)
    records = [random_batch(table, rng, 300, "/logs/a.log", 1), random_batch(table, rng, 200, "/logs/b.log", 1)]
    keys = sorted({value for batch in records for value in spec.keys(batch).to_pylist() if value is not None})
    spans = spans_for(spec, keys[:3])
    order = {"/logs/a.log": 0, "/logs/b.log": 1}
    for batch in records:
        evidence.write_batch(batch, evidence.folder_of(str(tmp_path)), evidence.columns_for(spec), order)

    kept = list(evidence.batches(evidence.kept_files(str(tmp_path))))
    assert len(kept[0].schema.names) < len(schemas.TABLES[table].names)  # compact: only what the tally reads
    agents_whole, agents_kept = (incidents.AgentRarity(), incidents.AgentRarity()) if table == "http" else (None, None)
    whole = incidents.tally_records(records, spec, spans, agents_whole)
    assert sum(t.records for t in whole) > 0
    assert tally_view(incidents.tally_records(kept, spec, spans, agents_kept), agents_kept) == \
        tally_view(whole, agents_whole)


def test_kept_batches_come_back_in_the_inputs_order_then_by_position(tmp_path):
    rng = random.Random(3)
    # Listed inputs z then a (not alphabetical); positions 9 and 10 (not in text order); written shuffled,
    # as workers finish in any order.
    order = {"/logs/z.log": 0, "/logs/a.log": 1}
    written = [("/logs/z.log", 9), ("/logs/z.log", 10), ("/logs/a.log", 2), ("/logs/a.log", 100), ("/elsewhere.log", 1)]
    batches = {place: random_batch("dns", rng, 5, *place) for place in written}
    spec = features.WindowSpec("dns")
    for place in rng.sample(written, len(written)):
        evidence.write_batch(batches[place], evidence.folder_of(str(tmp_path)), evidence.columns_for(spec), order)
    read = [(b.column("source_file")[0].as_py(), b.column("source_pos")[0].as_py())
            for b in evidence.batches(evidence.kept_files(str(tmp_path)))]
    assert read == written  # a file not among the inputs (never the case in a run) sorts last
    for batch in evidence.batches(evidence.kept_files(str(tmp_path))):
        place = (batch.column("source_file")[0].as_py(), batch.column("source_pos")[0].as_py())
        assert batch.equals(batches[place].select(evidence.columns_for(spec)))


def test_removing_leaves_the_output_as_it_was(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    spec = features.WindowSpec("dns")
    evidence.write_batch(random_batch("dns", random.Random(1), 4, "/a.log", 1), evidence.folder_of(str(tmp_path)),
                         evidence.columns_for(spec), {})
    assert len(evidence.kept_files(str(tmp_path))) == 1
    evidence.remove(str(tmp_path))
    assert [path.name for path in tmp_path.iterdir()] == ["summary.json"]
    assert evidence.kept_files(str(tmp_path)) == []
    evidence.remove(str(tmp_path))  # nothing kept (an older or finished output): nothing to do
