"""The coder of Arrow elements: the same bytes as pickling, sizes without encoding, used where the elements are."""
import collections
import pickle

import numpy as np
import pyarrow as pa
import pytest

from beamlytics import synthetic
from beamlytics.features import WindowPartials
from beamlytics.pipelines import cli
from beamlytics.transforms.coders import ArrowElementCoder, arrow_size
from beamlytics.transforms.score import ShardResult

SCENARIO = synthetic.Scenario(hours=1, clients=3, anomalous_client="10.0.0.2", anomaly_start_minute=30)


def _table(rows: int) -> pa.Table:
    # int64 and float64 without nulls: one 8-byte value buffer each, no validity buffer
    return pa.table({"a": np.arange(rows, dtype=np.int64), "b": np.zeros(rows)})


def test_the_bytes_are_pickles_and_decode_to_the_element():
    part = WindowPartials(_table(5), {"names": _table(3)}, None)
    coder = ArrowElementCoder()
    encoded = coder.encode(part)
    assert encoded == pickle.dumps(part, pickle.HIGHEST_PROTOCOL)
    decoded = coder.decode(encoded)
    assert decoded.measures.equals(part.measures) and decoded.distinct["names"].equals(part.distinct["names"])
    assert decoded.slots is None


def test_sizes_add_up_the_arrow_buffers_of_every_field():
    assert arrow_size(_table(1000)) == 2 * 8 * 1000
    assert arrow_size(_table(1000).to_batches()[0]) == 16_000
    assert arrow_size(_table(1000).slice(10, 100)) == 1600  # a slice's rows, not the buffers it shares
    part = WindowPartials(_table(100), {"names": _table(10), "peers": _table(20)}, None)
    assert arrow_size(part) == 1600 + 160 + 320 + 8  # `slots` None: a scalar's 8
    result = ShardResult(3, (_table(10),), _table(20), _table(30), _table(40), (("scores", 20),))
    assert arrow_size(result) == 8 + 160 + 320 + 480 + 640 + 8 + 8
    assert ArrowElementCoder().estimate_size(result) == arrow_size(result)


@pytest.fixture
def pickled(monkeypatch):
    """Types pickled while the test runs, counted: the one-process runner pickles only what crosses a stage
    (or what Beam encodes to estimate a size)."""
    counts = collections.Counter()
    dumps = pickle.dumps

    def counted(value, *args, **kwargs):
        counts[type(value).__name__] += 1
        return dumps(value, *args, **kwargs)

    monkeypatch.setattr(pickle, "dumps", counted)
    return counts


def test_detect_pickles_no_record_batch_or_shard_result(tmp_path, pickled):
    logs = tmp_path / "zeek"
    synthetic.write_zeek_logs(str(logs), SCENARIO)
    assert cli.main(["detect", "--table", "dns", "--quiet", "--shards", "2", "--output", str(tmp_path / "out"),
                     str(logs)]) == 0
    # Both are made and consumed in one step; the partials cross the windows' grouping: one per shard here.
    assert pickled["RecordBatch"] == 0 and pickled["ShardResult"] == 0
    assert pickled["WindowPartials"] == 2
