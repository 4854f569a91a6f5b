"""plcli label's labels file (append-only JSONL) and the choice of the next recording, without a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plcli.data.labels import LabelNormalizer
from plcli.data.manifest import Row
from plcli.errors import UserError
from plcli.label import select
from plcli.label.store import LabelStore, apply_labels, read_labels


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the labels file ----------------------------------------------------------------------------


def test_store_appends_one_fsynced_line_per_answer_and_replays(tmp_path):
    path = tmp_path / "labels.jsonl"
    with LabelStore(path) as store:
        store.write("a", "On my way")
        store.write("b", none_of_these=True)
        store.write("c", "ok")
        store.write("c", undo=True)
        assert store.has("a") and not store.has("c") and store.answer("b") is None
    recs = _records(path)
    assert [{k: v for k, v in r.items() if k != "time"} for r in recs] == [
        {"id": "a", "label": "On my way"}, {"id": "b", "none_of_these": True}, {"id": "c", "label": "ok"},
        {"id": "c", "undo": True}]
    assert all(r["time"].endswith("+00:00") for r in recs)
    assert read_labels(path) == {"a": "On my way", "b": None}
    assert read_labels(tmp_path / "missing.jsonl") == {}


def test_last_answer_wins_and_undo_drops_only_the_latest(tmp_path):
    path = tmp_path / "labels.jsonl"
    lines = [{"id": "a", "label": "x"}, {"id": "a", "label": "y"}, {"id": "a", "undo": True},
             {"id": "b", "label": "z"}, {"id": "b", "none_of_these": True}, {"id": "q", "undo": True}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert read_labels(path) == {"a": "x", "b": None}


def test_a_cut_off_last_line_is_ignored_with_a_warning_and_the_next_answer_starts_a_new_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps({"id": "a", "label": "x"}) + "\n" + '{"id": "b", "lab')
    with pytest.warns(UserWarning, match="cut off"):
        assert read_labels(path) == {"a": "x"}
    seen = []
    with LabelStore(path, warn=seen.append) as store:
        store.write("c", "y")
    assert len(seen) == 1 and "labels.jsonl:2" in seen[0]
    got = []
    assert read_labels(path, warn=got.append) == {"a": "x", "c": "y"}
    assert len(got) == 1 and "not valid JSON" in got[0]  # the fragment, now a line of its own


def test_malformed_records_are_ignored_with_a_warning(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('[1]\n{"id": "a"}\n{"id": "a", "label": 3}\n{"id": "a", "undo": false}\n'
                    '{"id": "a", "label": "x", "undo": true}\n\n{"id": "b", "label": "ok"}\n')
    seen = []
    assert read_labels(path, warn=seen.append) == {"b": "ok"}
    assert len(seen) == 5


def test_a_second_store_on_the_same_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "labels.jsonl"
    with LabelStore(path):
        with pytest.raises(UserError, match="labels.jsonl is in use by another"):
            LabelStore(path)
        # another process too (flock is per open file, so this is the real case)
        code = ("import sys; from plcli.label.store import LabelStore\n"
                "try:\n    LabelStore(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e)")
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}, check=True)
        assert out.stdout.startswith("UserError") and str(path) in out.stdout
    with LabelStore(path) as store:  # released on close
        store.write("a", "x")
    assert read_labels(path) == {"a": "x"}


def test_killed_writer_keeps_every_fsynced_answer(tmp_path):
    path = tmp_path / "labels.jsonl"
    code = ("import os, sys; from plcli.label.store import LabelStore\n"
            "s = LabelStore(sys.argv[1])\n"
            "for i in range(20):\n    s.write(f'r{i}', 'x')\n"
            "os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code, str(path)],
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert read_labels(path) == {f"r{i}": "x" for i in range(20)}
    with LabelStore(path) as store:  # the lock died with the process
        store.write("r0", undo=True)
    assert len(read_labels(path)) == 19


def test_apply_labels_on_rows_and_dicts():
    rows = [Row("a", Path("/a.wav"), ["x", "y"]), Row("b", Path("/b.wav"), ["x"], label="x", extra={"k": 1}),
            Row("c", Path("/c.wav"), ["y"])]
    out = apply_labels(rows, {"a": "y", "b": None, "zz": "x"})
    assert out[0].label == "y" and "none_of_these" not in out[0].extra
    assert out[1].label is None and out[1].extra == {"k": 1, "none_of_these": True}
    assert out[1].to_dict()["none_of_these"] is True and "label" not in out[1].to_dict()
    assert out[2] is rows[2] and rows[1].label == "x"  # the input is left alone
    dicts = [{"id": "a", "label": "old", "candidates": ["x"]}, {"id": "b", "none_of_these": True}, {"id": 3}]
    got = apply_labels(dicts, {"a": None, "b": "x", "3": "q"})
    assert got == [{"id": "a", "candidates": ["x"], "none_of_these": True}, {"id": "b", "label": "x"},
                   {"id": 3, "label": "q"}]


# -- choosing the next recording ------------------------------------------------------------------


def test_uncertainty():
    assert select.uncertainty([0.7, 0.2, 0.1]) == pytest.approx(0.3)
    assert select.uncertainty([0.45, 0.4, 0.15], "margin") == pytest.approx(0.95)
    assert select.uncertainty([1.0], "margin") == 0.0 and select.uncertainty([]) == 1.0
    with pytest.raises(ValueError):
        select.uncertainty([0.5], "entropy")


def test_spread_order_takes_turns_over_predicted_messages_most_uncertain_first():
    predicted = ["a", "a", "a", "b", "b", "c"]
    unsure = [0.9, 0.8, 0.7, 0.5, 0.6, 0.1]
    # round 1: each message's most uncertain row (a:0, b:4, c:5), by uncertainty; then a:1, b:3; then a:2
    assert select.spread_order(predicted, unsure) == [0, 4, 5, 1, 3, 2]
    assert select.spread_order([], []) == []


def test_model_order_from_stub_probabilities():
    cands = [["On my way", "ok"], ["on my way!", "Call me"], ["ok", "Call me"], ["OK", "on my way"]]
    probs = [np.array([0.55, 0.45]), np.array([0.99, 0.01]), np.array([0.6, 0.4]), np.array([0.2, 0.8])]
    order, reasons = select.model_order(cands, probs, LabelNormalizer())
    # predicted: on my way (rows 0, 1, 3), ok (row 2); round 1 = rows 0 (0.45) and 2 (0.4)
    assert order == [0, 2, 3, 1]
    assert "'On my way' 55%" in reasons[0] and "'ok' 45%" in reasons[0] and "0.45" in reasons[0]
    m_order, m_reasons = select.model_order(cands, probs, LabelNormalizer(), "margin")
    assert m_order == [0, 2, 3, 1] and "close call" in m_reasons[0]
    assert "only candidate" in select.reason(["x"], [1.0])


def test_diverse_order_is_seeded_and_takes_turns_over_speakers():
    groups = ["s1"] * 6 + ["s2"] * 3 + ["s3"]
    order = select.diverse_order(groups, seed=1)
    assert sorted(order) == list(range(10)) and order == select.diverse_order(groups, seed=1)
    assert {groups[i] for i in order[:3]} == {"s1", "s2", "s3"}
    assert {groups[i] for i in order[3:5]} == {"s1", "s2"}
    assert select.diverse_order(groups, seed=2) != order
    row = Row("a", Path("/a.wav"), ["x"], speaker="ann", extra={"chat": "family"})
    assert select.group_of(row) == ("family", "ann")
