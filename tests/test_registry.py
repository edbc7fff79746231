"""The submissions registry is append-only and survives concurrent writers and a crash mid-write."""

from __future__ import annotations

import multiprocessing

from src import registry


def append_many(index, writer: int, n: int) -> None:
    for i in range(n):
        registry.append(index, event="written", file=f"w{writer}_{i}.csv", cv="0.99", message='a, "quoted" note')


def test_concurrent_appends_all_land_intact(tmp_path):
    index = tmp_path / "index.csv"
    procs = [multiprocessing.Process(target=append_many, args=(index, w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows = registry.read(index)
    assert len(rows) == 200
    assert {r["file"] for r in rows} == {f"w{w}_{i}.csv" for w in range(4) for i in range(50)}
    assert all(r["message"] == 'a, "quoted" note' for r in rows)
    assert index.read_text().count("time,event,file") == 1  # one header


def test_a_row_cut_off_by_a_crash_is_skipped_and_sealed(tmp_path):
    index = tmp_path / "index.csv"
    registry.append(index, event="written", file="a.csv", cv="0.99")
    with open(index, "a") as f:
        f.write("2026-01-01T00:00:00Z,written,half.csv,fa")  # the process died here
    assert [r["file"] for r in registry.read(index)] == ["a.csv"]
    registry.append(index, event="written", file="b.csv", cv="0.98")
    assert [r["file"] for r in registry.read(index)] == ["a.csv", "b.csv"]


def test_latest_merges_events_per_file_newest_first(tmp_path):
    index = tmp_path / "index.csv"
    registry.append(index, time="2026-01-01T00:00:00Z", event="written", file="a.csv", cv="0.991", preset="fast")
    registry.append(index, time="2026-01-02T00:00:00Z", event="written", file="b.csv", cv="0.995", preset="full")
    registry.append(index, time="2026-01-03T00:00:00Z", event="submitted", file="a.csv", message="first try")
    registry.append(index, time="2026-01-04T00:00:00Z", event="scored", file="a.csv", public_score="0.99200")
    a, b = sorted(registry.latest(index), key=lambda r: r["file"])
    assert (a["cv"], a["preset"], a["public_score"], a["message"]) == ("0.991", "fast", "0.99200", "first try")
    assert a["submitted"] == "2026-01-03T00:00:00Z" and b["public_score"] == ""
