"""The window DoFns join a bundle's batches before making partials: fewer group-bys, the same features."""
import pytest

from beamlytics import features
from beamlytics.features import WindowSpec
from beamlytics.transforms import windows
from tests.test_transforms import MINUTE, dns_frame, reference_features, run_windows, to_batches


@pytest.mark.parametrize("windowing", ["key", "beam"])
def test_joined_batches_give_the_features_pandas_computes_with_fewer_partials(monkeypatch, windowing):
    made = []

    def counted(batch, spec):
        made.append(batch.num_rows)
        return partial_windows(batch, spec)

    partial_windows = features.partial_windows
    monkeypatch.setattr(features, "partial_windows", counted)
    monkeypatch.setattr(windows, "JOIN_ROWS", 1000)  # 3000 rows in 700-row batches: flushed mid-bundle and at its end
    frame = dns_frame(seed=5)
    spec = WindowSpec("dns", "c_ip", 5 * MINUTE)
    got = features.endpoint_windows(run_windows(to_batches(frame), spec, windowing))
    assert sum(made) == len(frame)
    assert len(made) < len(to_batches(frame)) and max(made) >= 1000
    expected = reference_features(frame, 5 * MINUTE)
    assert len(got) == len(expected)
    for window in got:
        row = expected.loc[(window.key, window.window_start)]
        assert window.records == row.records
        for name in ("distinct_peers", "distinct_names", "nxdomain_ratio", "unanswered_ratio"):
            assert window.features[name] == pytest.approx(row[name]), name
