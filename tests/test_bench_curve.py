"""The learning-curve benchmark (scripts/bench/curve.py) at tiny size: nested subsets, the per-cell cache,
the targets and the report on hand-made cells, the options; one slow end-to-end run."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest

from bench import curve


def _rows(n=120, speakers=12):
    return [
        {"id": f"r{i:03d}", "audio": f"{i}.wav", "speaker": f"s{i % speakers}", "candidates": ["a", "b"]}
        for i in range(n)
    ]


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def test_nested_subsets():
    from bench.common import split_speakers

    fit, val = split_speakers(_rows(), 0.2, 0)
    small, large = curve.nested_subset(fit, 30, 0), curve.nested_subset(fit, 60, 0)
    ids = lambda rows: [r["id"] for r in rows]  # noqa: E731
    assert len(small) == 30 and len(large) == 60 and set(ids(small)) < set(ids(large))
    assert curve.nested_subset(fit, 30, 0) == small  # deterministic
    assert curve.nested_subset(list(reversed(fit)), 30, 0) == list(reversed(small))  # order-independent
    assert set(ids(curve.nested_subset(fit, 30, 1))) != set(ids(small))  # the seed matters
    assert ids(small) == sorted(ids(small))  # original order kept
    held = {r["speaker"] for r in val}
    assert held and not held & {r["speaker"] for r in large}
    with pytest.raises(ValueError):
        curve.nested_subset(fit, len(fit) + 1, 0)


def test_prepare_dist_writes_nested_manifests(tmp_path, monkeypatch):
    from plcli.data.validate import load_rows
    from tests.conftest import write_dataset, write_truth

    demo = tmp_path / "demo"
    _, truth = write_dataset(demo, n=60, name="train.jsonl")
    write_dataset(demo, n=12, name="test.jsonl", seed=1, unlabelled=0, exact_every=1)
    write_truth(demo / "truth.jsonl", truth)
    monkeypatch.setattr(curve, "make_demo", lambda a, data, extra: demo)
    a = curve.parse(
        ["--out", str(tmp_path / "o"), "--sizes", "20", "30", "--extra", "30:0.5", "--seeds", "0", "1"]
        + ["--three-seeds-upto", "20", "--rates", "0.1", "--val-speakers", "0.34"]
    )
    prep = curve.prepare_dist(a, tmp_path / "o" / "zipf", "zipf")
    assert prep["counts"]["val_speakers"] == 1 and prep["counts"]["fit"] == 40
    sizes = prep["sizes"]
    assert set(sizes[20]["manifests"]) == {(0.1, 0), (0.1, 1)}
    assert set(sizes[30]["manifests"]) == {(0.1, 0), (0.5, 0)}  # one seed above --three-seeds-upto
    val = {r.id for r in load_rows([sizes[20]["val"]], log=lambda *m: None).rows}

    def read(n, rate, seed):
        return load_rows([sizes[n]["manifests"][(rate, seed)][0]], log=lambda *m: None).rows

    small, large = read(20, 0.1, 0), read(30, 0.1, 0)
    assert (
        len(small) == 20 and {r.id for r in small} < {r.id for r in large} and not val & {r.id for r in large}
    )
    assert (
        sum(r.label is not None for r in small) == 2
        and sum(r.label is not None for r in read(30, 0.5, 0)) == 15
    )
    assert all(r.label == truth[r.id] for r in large if r.label)
    with pytest.raises(SystemExit, match="fewer than"):
        curve.prepare_dist(curve.parse(["--sizes", "41", "--val-speakers", "0.34"]), tmp_path / "x", "zipf")


def test_options_and_grid():
    a = curve.parse([])
    assert (
        a.sizes == [600, 1200, 2400, 4800] and a.dists == ["zipf", "uniform"] and a.rows == list(curve.ROWS)
    )
    assert curve.pairs(a) == [(600, 0.05), (1200, 0.01), (1200, 0.05), (2400, 0.05), (4800, 0.05)]
    assert curve.seeds_at(a, 1200) == [0, 1, 2] and curve.seeds_at(a, 2400) == [0]
    assert curve.demo_train_size(a.sizes, a.val_speakers) == math.ceil(4800 / 0.9 * 1.25)
    b = curve.parse(["--sizes", "40", "80", "--extra", "--rates", "0.1", "0.2", "--rows", "plcli", "oracle"])
    assert curve.pairs(b) == [(40, 0.1), (40, 0.2), (80, 0.1), (80, 0.2)] and b.rows == ["plcli", "oracle"]
    assert b.baseline_epochs is None and b.cache.name
    c = curve.parse(["--extra", "40:0.5", "80:0.01", "--distill-epochs", "3"])
    assert c.extra == [(40, 0.5), (80, 0.01)] and c.baseline_epochs == 3
    with pytest.raises(SystemExit):
        curve.parse(["--extra", "1200"])
    with pytest.raises(SystemExit):
        curve.parse(["--dists", "gauss"])


def test_train_size_is_kept_between_runs(tmp_path):
    a = curve.parse(["--out", str(tmp_path), "--sizes", "90"])
    curve.resolve_train(a, tmp_path)
    assert a.train == curve.demo_train_size([90], 0.1)
    (tmp_path / "settings.json").write_text(json.dumps({"train": 500}))
    b = curve.parse(["--out", str(tmp_path), "--sizes", "90", "180"])
    curve.resolve_train(b, tmp_path)
    assert b.train == 500  # the data already generated is reused when N grows


# ---------------------------------------------------------------------------------------------
# Cells and resuming
# ---------------------------------------------------------------------------------------------


def _fake_compute(calls):
    def compute(a, bench, paths, row, rate, seed, n):
        calls.append((bench.name, row, rate, seed))
        cell = {"row": row, "rate": rate, "seed": seed, "accuracy": 0.5, "accuracy_within": 0.6}
        if row == "plcli":
            cell["teacher"] = {**cell, "row": "teacher", "accuracy": 0.4}
        return cell

    return compute


def test_cells_are_cached_and_resume(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(curve, "compute_cell", _fake_compute(calls))
    a = curve.parse(
        ["--sizes", "40", "80", "--extra", "80:0.01", "--seeds", "0", "1", "--three-seeds-upto", "40"]
    )
    sizes = {40: {}, 80: {}}
    cells = curve.dist_cells(a, tmp_path, "zipf", sizes)
    # N=40: 2 seeds x (plcli, oracle, no-pretrain); N=80: 1 seed x 2 rates x (plcli, no-pretrain) + 1 oracle
    assert len(calls) == 6 + 5
    assert sum(c[1] == "oracle" for c in calls) == 3
    assert (tmp_path / "n80" / "cells" / "oracle-s0.json").exists()
    assert (tmp_path / "n80" / "cells" / "plcli-r0.01-s0.json").exists()
    rows = [c["row"] for c in cells]
    assert rows.count("teacher") == rows.count("plcli") == 4 and rows.count("oracle") == 3
    assert all(c["rate"] is None for c in cells if c["row"] == "oracle")
    assert all("teacher" not in c and c["dist"] == "zipf" and c["n"] in (40, 80) for c in cells)
    assert next(c for c in cells if c["row"] == "teacher")["accuracy"] == 0.4
    again = curve.dist_cells(a, tmp_path, "zipf", sizes)
    assert len(calls) == 11 and [c["accuracy"] for c in again] == [c["accuracy"] for c in cells]
    # a teacher-only run still uses (and does not repeat) the plcli pipeline's cell
    t = curve.dist_cells(
        curve.parse(["--sizes", "40", "--seeds", "0", "--rows", "teacher"]), tmp_path, "zipf", {40: {}}
    )
    assert len(calls) == 11 and [c["row"] for c in t] == ["teacher"]


def test_teacher_only_cells(tmp_path, monkeypatch):
    """A teacher-only run trains no distill (its own cell), and the plcli cell supersedes it later."""
    calls = []
    monkeypatch.setattr(curve, "compute_cell", _fake_compute(calls))
    teacher_only = curve.parse(["--sizes", "40", "--seeds", "0", "1", "--rows", "teacher"])
    t = curve.dist_cells(teacher_only, tmp_path, "zipf", {40: {}})
    assert calls == [("n40", "teacher", 0.05, 0), ("n40", "teacher", 0.05, 1)]
    assert [(c["row"], c["seed"], c["n"], c["rate"]) for c in t] == [("teacher", 0, 40, 0.05),
                                                                      ("teacher", 1, 40, 0.05)]
    assert (tmp_path / "n40" / "cells" / "teacher-r0.05-s1.json").exists()
    # a report before the plcli cells exist shows the teacher cells
    report = curve.parse(["--sizes", "40", "--seeds", "0", "1", "--report-only"])
    assert [c["row"] for c in curve.dist_cells(report, tmp_path, "zipf", {40: {}})] == ["teacher", "teacher"]
    # the plcli cell of seed 0 is computed; its teacher (0.4) replaces the teacher-only cell (0.5)
    curve.dist_cells(curve.parse(["--sizes", "40", "--seeds", "0", "--rows", "plcli"]), tmp_path, "zipf",
                     {40: {}})
    assert calls[-1] == ("n40", "plcli", 0.05, 0)
    cells = curve.dist_cells(report, tmp_path, "zipf", {40: {}})
    assert sorted((c["row"], c["seed"], c["accuracy"]) for c in cells) == [
        ("plcli", 0, 0.5), ("teacher", 0, 0.4), ("teacher", 1, 0.5)
    ]
    assert len(calls) == 3  # nothing was computed again


def test_grammar_row(tmp_path, monkeypatch):
    test = tmp_path / "test.jsonl"
    rows = [
        {"id": "t0", "audio": "0.wav", "label": "On my way.", "candidates": ["ok", "on my way"]},
        {"id": "t1", "audio": "1.wav", "label": "ok", "candidates": ["ok", "on my way"]},
        {"id": "t2", "audio": "2.wav", "label": "ok", "candidates": ["no", "yes"]},
        {"id": "t3", "audio": "3.wav", "label": "ok", "candidates": []},
    ]
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []

    def choose(paths, candidates, workers=2, progress=None):
        seen.append((paths, candidates))
        return [1, -1, 0], {"decode_seconds": 1.0, "clips_per_second": 3.0}

    monkeypatch.setitem(sys.modules, "plcli.grammar", types.SimpleNamespace(choose_with_grammar=choose))
    monkeypatch.setattr(curve, "grammar_available", lambda: None)
    a = curve.parse(["--asr-workers", "1"])
    c = curve.run_grammar(a, tmp_path, "zipf", test)
    assert seen[0][0] == ["0.wav", "1.wav", "2.wav"]  # rows without candidates are not decoded
    assert c["accuracy"] == 0.25 and c["accuracy_within"] == pytest.approx(1 / 3) and c["no_choice"] == 1
    assert c["n"] is None and c["rate"] is None and c["dist"] == "zipf"
    assert curve.run_grammar(a, tmp_path, "zipf", test)["accuracy"] == 0.25 and len(seen) == 1
    monkeypatch.setattr(curve, "grammar_available", lambda: "plcli.grammar is not installed")
    assert curve.run_grammar(a, tmp_path / "other", "zipf", test) is None
    assert not (tmp_path / "other").exists()  # nothing cached: the row runs once the module exists


# ---------------------------------------------------------------------------------------------
# Report and targets (pure)
# ---------------------------------------------------------------------------------------------


def _cell(row, n, rate, seed, acc, within=None, dist="zipf"):
    return {"dist": dist, "row": row, "n": n, "rate": rate, "seed": seed, "accuracy": acc,
            "accuracy_within": acc if within is None else within}  # fmt: skip


def _hand_cells():
    cells = []
    for n, oracle, plcli, teacher, nopre in (
        (600, 0.80, [0.70, 0.72, 0.71], [0.50, 0.52, 0.51], [0.40, 0.42, 0.41]),
        (1200, 0.90, [0.83, 0.82, 0.84], [0.60, 0.65, 0.70], [0.80, 0.70, 0.75]),
        (2400, 0.95, [0.90], [0.60], [0.88]),
    ):
        for s, p in enumerate(plcli):
            cells.append(_cell("oracle", n, None, s, oracle))
            cells.append(_cell("plcli", n, 0.05, s, p, within=p + 0.05))
            cells.append(_cell("teacher", n, 0.05, s, teacher[s]))
            cells.append(_cell("no-pretrain", n, 0.05, s, nopre[s]))
    cells.append(_cell("grammar", None, None, None, 0.74, dist="zipf"))
    return cells


def test_targets_on_hand_made_cells():
    cells = _hand_cells()
    t600 = curve.check_targets(cells, "zipf", 600, 0.05)
    assert t600["plcli"]["status"] == "-" and t600["teacher"]["status"] == "-"
    assert t600["pretraining"]["status"] == "pass"  # +0.30 against 2 sd = 0.02
    assert t600["grammar"]["status"] == "pass" and t600["grammar"]["text"] == "0.760 > 0.740"
    t1200 = curve.check_targets(cells, "zipf", 1200, 0.05)
    assert t1200["plcli"]["status"] == "pass" and t1200["plcli"]["text"] == f"{0.83 / 0.90:.3f} ≥ 0.90"
    assert t1200["teacher"]["status"] == "pass"  # 0.65 / 0.90 = 0.72
    assert t1200["pretraining"]["status"] == "fail" and t1200["pretraining"]["text"] == "+0.080 ≤ 0.100"
    t2400 = curve.check_targets(cells, "zipf", 2400, 0.05)
    assert t2400["plcli"]["status"] == "fail" and t2400["plcli"]["text"] == f"{0.90 / 0.95:.3f} < 0.95"
    assert t2400["teacher"]["status"] == "fail" and t2400["pretraining"]["status"] == "-"
    assert t2400["grammar"]["status"] == "pass"
    missing = curve.check_targets(cells, "uniform", 1200, 0.05, grammar_unavailable="no module")
    assert missing["plcli"]["status"] == "missing" and missing["grammar"]["status"] == "n/a"
    one = [c for c in cells if c["seed"] in (0, None)]
    assert curve.check_targets(one, "zipf", 600, 0.05)["pretraining"]["status"] == "n/a"


def test_target_thresholds():
    cells = [_cell("oracle", 1200, None, 0, 1.0), _cell("teacher", 1200, 0.05, 0, 0.70)]
    assert curve.check_targets(cells, "zipf", 1200, 0.05)["teacher"]["status"] == "pass"  # ≥, not >
    cells = [_cell("oracle", 1200, None, 0, 1.0), _cell("plcli", 1200, 0.01, 0, 0.899)]
    assert curve.check_targets(cells, "zipf", 1200, 0.01)["plcli"]["status"] == "fail"
    cells = [_cell("oracle", 4800, None, 0, 1.0), _cell("plcli", 4800, 0.05, 0, 0.95)]
    assert curve.check_targets(cells, "zipf", 4800, 0.05)["plcli"]["status"] == "pass"


def test_curve_and_targets_tables(tmp_path):
    cells = _hand_cells()
    grid = [(600, 0.05), (1200, 0.05), (2400, 0.05)]
    table = curve.curve_table(cells, "zipf", grid).strip().splitlines()
    assert len(table) == 2 + 3 * len(curve.ROWS)
    plcli = [x.strip() for x in table[2 + len(curve.ROWS) + 1].strip("|").split("|")]
    assert plcli[:3] == ["1200", "5%", curve.ROW_NAMES["plcli"]]
    assert plcli[3] == "0.830 ± 0.010" and plcli[5] == "3" and plcli[6] == f"{0.83 / 0.90:.3f}"
    grammar = [x.strip() for x in table[2 + len(curve.ROWS) - 1].strip("|").split("|")]
    assert grammar[3] == "0.740" and grammar[5] == "no training"
    oracle = [x.strip() for x in table[2 + 2 * len(curve.ROWS)].strip("|").split("|")]
    assert oracle[0] == "2400" and oracle[3] == "0.950" and oracle[6] == "1.000"
    missing = curve.curve_table([], "zipf", grid[:1], ["grammar", "plcli"], grammar_unavailable="no module")
    assert "not available (no module)" in missing and "not measured" in missing
    targets = curve.targets_table(cells, "zipf", grid).strip().splitlines()
    assert len(targets) == 2 + 3 and all(v in targets[0] for v in curve.TARGETS.values())
    assert targets[3].startswith("| 1200 | 5% | **pass**:")
    summary = curve.targets_summary(cells, ["zipf"], grid)
    assert summary == {"pass": 6, "fail": 3}
    png = curve.curve_chart(cells, tmp_path / "c.png", ["zipf", "uniform"], grid)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_report_only_computes_nothing_and_keeps_the_finished_cells(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(curve, "compute_cell", _fake_compute(calls))
    curve.dist_cells(curve.parse(["--sizes", "40", "--extra", "--seeds", "0"]), tmp_path, "zipf", {40: {}})
    assert len(calls) == 3
    a = curve.parse(["--sizes", "40", "80", "--extra", "--seeds", "0", "1", "--report-only"])
    cells = curve.dist_cells(a, tmp_path, "zipf", {40: {}, 80: {}})
    assert len(calls) == 3  # nothing computed
    assert sorted((c["row"], c["n"], c["seed"]) for c in cells) == [
        ("no-pretrain", 40, 0), ("oracle", 40, 0), ("plcli", 40, 0), ("teacher", 40, 0)
    ]
    assert curve.run_grammar(a, tmp_path, "zipf", tmp_path / "test.jsonl") is None
    assert not (tmp_path / "cells" / "grammar.json").exists()
    # the teacher's cell carries the plcli cell's stamps
    teacher = next(c for c in cells if c["row"] == "teacher")
    assert teacher["cpu"] and teacher["code"] and teacher["finished"]
    table = curve.curve_table(cells, "zipf", curve.pairs(a))
    assert "| 80 | 5% | plcli (defaults) | not measured |" in table


def test_report_only_generates_no_data_and_reads_the_data_counts_kept_with_the_cells(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(curve, "compute_cell", _fake_compute([]))
    out = tmp_path / "o"
    args = ["--out", str(out), "--sizes", "40", "--extra", "--seeds", "0", "--dists", "zipf", "--cache",
            str(tmp_path / "c")]
    curve.dist_cells(curve.parse(args), out / "zipf", "zipf", {40: {}})
    curve.data_cell(out / "zipf").parent.mkdir(parents=True)
    curve.data_cell(out / "zipf").write_text(json.dumps({"fit": 7, "test": 3}))

    def no_data(*_, **__):
        raise AssertionError("--report-only generated data")

    monkeypatch.setattr(curve, "make_demo", no_data)
    assert curve.main([*args, "--report-only"]) == 0
    report = (out / "results.md").read_text()
    assert 'Data: {"fit": 7, "test": 3}.' in report
    assert "| 40 | 5% | plcli (defaults) | 0." in report  # read back, not "not measured"


def test_cells_record_cpu_and_code_and_the_report_counts_them(tmp_path):
    from bench.common import code_version, provenance, stamped

    cell = stamped(lambda: {"row": "plcli", "accuracy": 0.5})()
    assert cell["accuracy"] == 0.5 and cell["finished"] and "cores" in cell["cpu"]
    # a checkout gives the short commit (maybe +dirty); an installed package its version
    assert cell["code"] == code_version() and cell["code"]
    cells = [
        {"cpu": "A, 2 cores", "code": "abc1234"},
        {"cpu": "A, 2 cores", "code": "def5678+dirty"},
        {"cpu": "B, 2 cores", "code": "abc1234"},
        {},  # a cell from before the stamps existed
    ]
    text = provenance(cells)
    assert text == (
        "CPU: A, 2 cores (2 cells); B, 2 cores (1 cells); not recorded (1 cells). "
        "code: abc1234 (2 cells); def5678+dirty (1 cells); not recorded (1 cells)."
    )
    a = curve.parse(["--sizes", "600", "--extra", "--dists", "zipf"])
    hand = [{**c, **h} for c, h in zip(cells, _hand_cells())]
    md = curve.report_markdown(hand, a, {}, "2026-01-01 00:00", "c.png")
    assert "Cells computed on CPU: A, 2 cores (2 cells)" in md


def test_report_is_a_generated_page_of_its_own(tmp_path):
    """The published report is a whole page (docs/results/curve.md) whose first line says it is
    generated and by which make target; it no longer goes between markers of a hand-written page."""
    from bench.common import generated_note

    doc = tmp_path / "b.md"
    doc.write_text("# B\n\nbefore\n\nold\n\nafter\n")
    curve.write_page(doc, "new table\n")
    text = doc.read_text()
    assert text.splitlines()[0] == generated_note("make bench-curve") == generated_note(curve.MAKE_TARGET)
    assert "before" not in text and "after" not in text and "old" not in text and "new table" in text
    curve.write_page(tmp_path / "results" / "fresh.md", "x\n")
    assert (tmp_path / "results" / "fresh.md").read_text().startswith("<!-- generated by `make bench-curve`")
    a = curve.parse(["--sizes", "600", "1200", "2400", "--extra", "--dists", "zipf"])
    md = curve.report_markdown(_hand_cells(), a, {"zipf": {"fit": 1}}, "2026-01-01 00:00", "c.png")
    assert "#### Zipf messages (`--zipf 1`)" in md and "![accuracy against N](c.png)" in md
    assert "Targets: fail 3, pass 6." in md


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_curve_end_to_end_resumes(tmp_path, monkeypatch):
    """Generated demo data (espeak-ng), N = 40 and 80, one seed, one epoch per stage; the second run
    computes nothing."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o"
    args = ["--out", str(out), "--sizes", "40", "80", "--extra", "80:0.1", "--seeds", "0", "--dists", "zipf"]
    args += ["--test", "20", "--views", "2", "--pretrain-epochs", "1", "--finetune-epochs", "1"]
    args += [
        "--distill-epochs",
        "1",
        "--baseline-min-steps",
        "2",
        "--accelerator",
        "cpu",
        "--cache",
        str(tmp_path / "c"),
    ]
    args += ["--report", str(tmp_path / "doc.md")]
    assert curve.main(args) == 0
    cells = json.loads((out / "results.json").read_text())
    trained = [c for c in cells if c["row"] != "grammar"]
    assert sorted({c["row"] for c in trained}) == ["no-pretrain", "oracle", "plcli", "teacher"]
    assert len(trained) == 2 * 3 + 3 + 2  # N=40: 3 rows + teacher; N=80: 2 rates x 3 + 1 oracle
    assert all(0 <= c["accuracy"] <= 1 for c in cells)
    files = sorted(out.rglob("cells/*.json"))
    stamps = [p.stat().st_mtime_ns for p in files]
    assert curve.main(args) == 0
    assert [p.stat().st_mtime_ns for p in files] == stamps
    assert (tmp_path / "benchmark-curve.png").exists() and "| 80 | 10% |" in (tmp_path / "doc.md").read_text()
    assert (tmp_path / "doc.md").read_text().startswith("<!-- generated by `make bench-curve`")


def test_the_oracle_starts_from_the_pretrained_encoder_where_plclis_student_does(tmp_path, monkeypatch):
    """Below distill's small_data the oracle is plcli's student (the pretrained encoder, new head) on
    true labels; above, the small student from scratch."""
    from plcli.distill import DistillConfig

    seen = {}
    monkeypatch.setattr(curve, "pretrain", lambda a, bench, paths, seed: {"dir": tmp_path / f"pre-s{seed}"})
    monkeypatch.setattr(curve, "baseline_cell",
                        lambda *args, init_encoder=None: seen.setdefault(args[-1], init_encoder))
    small = DistillConfig().small_data
    curve.compute_cell(None, tmp_path, {}, "oracle", 0.05, 1, small - 1)
    assert seen.pop(1) == tmp_path / "pre-s1" / "encoder.pt"
    curve.compute_cell(None, tmp_path, {}, "oracle", 0.05, 2, small)
    assert seen.pop(2) is None
