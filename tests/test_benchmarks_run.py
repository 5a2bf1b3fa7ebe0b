"""`python -m benchmarks.run` without names runs the quick benchmarks only; named ones run as asked."""
from __future__ import annotations

from types import SimpleNamespace

from benchmarks import run


def _recording(monkeypatch) -> list[str]:
    ran: list[str] = []
    fakes = {name: SimpleNamespace(run=lambda *_, name=name: ran.append(name) or []) for name in run.BENCHMARKS}
    monkeypatch.setattr(run, "BENCHMARKS", fakes)
    return ran


def test_no_names_runs_every_benchmark_but_the_long_attack_and_soak_ones(monkeypatch):
    ran = _recording(monkeypatch)
    assert run.main([]) == 0
    assert ran == ["zeek", "logs", "pcap_dns", "pcap_flows", "spot", "poisson", "detect", "hostile", "scale", "nfstream",
                   "help"]


def test_long_benchmarks_run_when_named(monkeypatch):
    ran = _recording(monkeypatch)
    assert run.main(["attacks", "soak"]) == 0
    assert ran == ["attacks", "soak"]


def test_an_unknown_name_is_refused_with_exit_2(monkeypatch, capsys):
    ran = _recording(monkeypatch)
    assert run.main(["atacks"]) == 2
    assert ran == [] and "unknown benchmark(s): atacks" in capsys.readouterr().err
