"""The recogniser's vote as a prior (plcli.asr_prior): the Bayes update against a by-hand reference,
the accuracy estimate, the cache, and its effect on finetune's and distill's targets."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from plcli import asr_prior
from plcli.data.labels import Vocabulary
from plcli.data.manifest import Row
from plcli.losses import candidate_targets

TEXTS = ["a b", "c d", "e f", "g h", "i j"]


def _rows(tmp_path: Path, cands: list[list[str]], labels: list[str | None]) -> list[Row]:
    rows = []
    for i, (cs, lab) in enumerate(zip(cands, labels, strict=True)):
        audio = tmp_path / f"r{i}.wav"
        audio.write_bytes(b"RIFF" + bytes(i))  # never read: the decoder is replaced in these tests
        rows.append(Row(id=f"r{i}", audio=audio, candidates=cs, label=lab))
    return rows


def test_vote_bonus_values_and_checks():
    assert asr_prior.vote_bonus(0.5, 10) == pytest.approx(math.log(9))
    assert asr_prior.vote_bonus(0.9, 3) == pytest.approx(math.log(0.9 * 2 / 0.1))
    assert asr_prior.vote_bonus(0.1, 10) == 0.0  # chance: no information
    assert asr_prior.vote_bonus(0.05, 10) == 0.0  # worse than chance is not read as anti-evidence
    assert asr_prior.vote_bonus(0.9, 1) == 0.0
    assert math.isfinite(asr_prior.vote_bonus(1.0, 10))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            asr_prior.vote_bonus(bad, 10)


def test_smoothed_accuracy():
    assert asr_prior.smoothed_accuracy(0, 0) == 0.5
    assert asr_prior.smoothed_accuracy(8, 10) == pytest.approx(9 / 12)
    with pytest.raises(ValueError):
        asr_prior.smoothed_accuracy(3, 2)


def test_bonus_is_bayes_rule_against_a_reference(tmp_path):
    """candidate_targets(z + bonus) equals p_j * L(vote | j) / sum over the candidates, with the
    symmetric-noise likelihood L = a for the voted candidate and (1 - a) / (K - 1) for the others."""
    vocab = Vocabulary.build(TEXTS)
    cands = [["a b", "c d", "e f"], ["c d", "g h", "i j", "a b"], ["e f", "a b"], ["g h", "i j"]]
    rows = _rows(tmp_path, cands, [None] * 4)
    votes = np.array([1, 3, -1, 0])
    a = 0.7
    bonus = asr_prior.bonus_matrix(rows, votes, vocab, a)
    torch.manual_seed(0)
    z = torch.randn(4, len(vocab))
    mask = torch.zeros(4, len(vocab), dtype=torch.bool)
    for i, cs in enumerate(cands):
        mask[i, [vocab.index(c) for c in cs]] = True
    got = candidate_targets(z + torch.from_numpy(bonus), mask)
    p = torch.softmax(z, dim=1)
    for i, cs in enumerate(cands):
        k = len(cs)
        like = {vocab.index(c): (a if j == votes[i] else (1 - a) / (k - 1)) for j, c in enumerate(cs)}
        if votes[i] < 0:
            like = dict.fromkeys(like, 1.0)
        num = {c: float(p[i, c]) * lk for c, lk in like.items()}
        total = sum(num.values())
        for c in range(len(vocab)):
            assert float(got[i, c]) == pytest.approx(num.get(c, 0.0) / total, abs=1e-6), (i, c)


def test_bonus_matrix_unknown_texts_and_bad_votes(tmp_path):
    vocab = Vocabulary.build(["a b", "c d"])
    rows = _rows(tmp_path, [["a b", "zz", "c d"], ["a b", "c d"], []], [None, None, None])
    b = asr_prior.bonus_matrix(rows, np.array([1, -1, -1]), vocab, 0.9)
    assert not b.any()  # a vote for a text outside the vocabulary, no vote, no candidates
    b = asr_prior.bonus_matrix(rows, np.array([2, 0, -1]), vocab, 0.9)
    assert b[0, vocab.index("c d")] == pytest.approx(asr_prior.vote_bonus(0.9, 3))
    assert b[1, vocab.index("a b")] == pytest.approx(asr_prior.vote_bonus(0.9, 2))
    assert np.count_nonzero(b) == 2
    with pytest.raises(ValueError):
        asr_prior.bonus_matrix(rows, np.array([5, 0, -1]), vocab, 0.9)
    with pytest.raises(ValueError):
        asr_prior.bonus_matrix(rows, np.array([0]), vocab, 0.9)


def test_vote_accuracy_counts_exact_rows_with_their_label_among_the_candidates(tmp_path):
    vocab = Vocabulary.build(TEXTS)
    rows = _rows(tmp_path, [["a b", "c d"], ["a b", "c d"], ["e f", "g h"], ["a b", "c d"], ["a b"]],
                 ["A b!", "c d", "i j", None, "a b"])
    hits, n = asr_prior.vote_accuracy(rows, np.array([0, 0, 0, 1, -1]), vocab.normalizer)
    # row 0 right (labels compare normalised), row 1 wrong, row 2 has its label outside the
    # candidates, row 3 has no label, row 4 got no vote (a miss)
    assert (hits, n) == (1, 3)


class _FakeDecoder:
    """Stands in for pocketsphinx: votes for the candidate ``truth`` names, and counts its calls."""

    def __init__(self, truth: dict[str, str]):
        self.truth, self.calls = truth, []

    def __call__(self, paths, candidates, workers=2, progress=None, voice="en-us"):
        self.calls.append(list(paths))
        out = []
        for p, cs in zip(paths, candidates, strict=True):
            label = self.truth.get(Path(p).name)
            out.append(cs.index(label) if label in cs else -1)
        return out, {"clips_per_second": 1.0, "no_result": sum(o < 0 for o in out)}


@pytest.fixture
def fake_decoder(monkeypatch):
    import plcli.grammar as grammar

    def install(truth_by_file: dict[str, str]) -> _FakeDecoder:
        fake = _FakeDecoder(truth_by_file)
        monkeypatch.setattr(grammar, "choose_with_grammar", fake)
        return fake

    return install


def test_votes_are_cached_per_recording_and_candidates(tmp_path, fake_decoder):
    rows = _rows(tmp_path, [["a b", "c d"], ["c d", "e f"], []], [None, "c d", None])
    fake = fake_decoder({"r0.wav": "c d", "r1.wav": "c d"})
    cache = tmp_path / "cache"
    v = asr_prior.grammar_votes(rows, cache, log=lambda *_: None)
    assert v.tolist() == [1, 0, -1] and len(fake.calls) == 1 and len(fake.calls[0]) == 2
    assert asr_prior.grammar_votes(rows, cache, log=lambda *_: None).tolist() == [1, 0, -1]
    assert len(fake.calls) == 1  # reused
    os.utime(rows[0].audio, ns=(1, 1))  # the file changed: decode again
    asr_prior.grammar_votes(rows, cache, log=lambda *_: None)
    assert len(fake.calls) == 2
    rows[1].candidates = ["c d", "g h"]  # other candidates: decode again
    asr_prior.grammar_votes(rows, cache, log=lambda *_: None)
    assert len(fake.calls) == 3


def test_votes_skip_recordings_without_a_pronounceable_candidate(tmp_path, fake_decoder):
    """pocketsphinx's model spells Latin letters only: a Russian chat's candidates give it no
    grammar, so nothing is decoded and the log says so, with no clips/s figure."""
    rows = _rows(tmp_path, [["Привет", "Пока"], ["До завтра!", "Да"]], [None, "Да"])
    fake = fake_decoder({})
    logged = []
    assert asr_prior.grammar_votes(rows, tmp_path / "c", log=logged.append).tolist() == [-1, -1]
    assert fake.calls == [] and "skipped" in logged[-1] and "clips/s" not in " ".join(logged)
    rows = _rows(tmp_path, [["Привет", "Пока"], ["a b", "Да"]], [None, None])
    fake = fake_decoder({"r1.wav": "a b"})
    assert asr_prior.grammar_votes(rows, tmp_path / "c", log=logged.append).tolist() == [-1, 0]
    assert fake.calls == [[str(rows[1].audio)]] and "1 without a pronounceable candidate" in logged[-2]


def test_prior_for_estimates_the_accuracy_or_takes_it(tmp_path, fake_decoder):
    vocab = Vocabulary.build(TEXTS)
    rows = _rows(tmp_path, [["a b", "c d"]] * 4, ["a b", "a b", "c d", None])
    fake_decoder(dict.fromkeys(["r0.wav", "r1.wav", "r2.wav", "r3.wav"], "a b"))  # right on 2 of 3 exact rows
    assert asr_prior.prior_for(rows, vocab, "none", tmp_path / "c") == (None, {"kind": "none"})
    bonus, info = asr_prior.prior_for(rows, vocab, "pocketsphinx", tmp_path / "c", log=lambda *_: None)
    assert (info["exact_hits"], info["exact_rows"], info["accuracy"]) == (2, 3, pytest.approx(0.6))
    assert bonus[3, vocab.index("a b")] == pytest.approx(math.log(0.6 / 0.4))
    _, info = asr_prior.prior_for(rows, vocab, "pocketsphinx", tmp_path / "c", accuracy=0.9,
                                  log=lambda *_: None)
    assert info["accuracy"] == 0.9 and info["accuracy_source"] == "given"
    from plcli.errors import UserError

    with pytest.raises(UserError):
        asr_prior.prior_for(rows, vocab, "kaldi", tmp_path / "c")


def _oracle_votes(manifest: Path, truth: dict) -> dict[str, str]:
    by_file = {}
    for line in manifest.read_text().splitlines():
        r = json.loads(line)
        by_file[Path(r["audio"]).name] = truth[r["id"]]
    return by_file


def test_finetune_with_the_prior_starts_proden_from_the_votes(tmp_path, fake_decoder):
    """With a vote that is always right, PRODEN's starting targets name every candidate row's truth
    (uniform over the candidates without it), and the run reports what the prior rests on."""
    import yaml
    from typer.testing import CliRunner

    from plcli.cli import app
    from plcli.finetune import FinetuneConfig, _module, _prepare
    from tests.conftest import write_dataset, write_truth

    manifest, truth = write_dataset(tmp_path / "data", n=36, n_classes=4, k=3)
    tf = write_truth(tmp_path / "truth.jsonl", truth)
    fake = fake_decoder(_oracle_votes(manifest, truth))

    cfg = FinetuneConfig(out=str(tmp_path / "unused"), pretrained="none", asr_prior="pocketsphinx")
    cfg.data.manifests = [str(manifest)]
    cfg.validate()
    inp = _prepare(cfg, log=lambda *_: None)
    inp.asr_bonus, _ = asr_prior.prior_for(inp.rows, inp.vocab, "pocketsphinx", tmp_path / "c",
                                           log=lambda *_: None)
    cand = [i for i, r in enumerate(inp.rows) if r.label is None and r.candidates]
    t = _module(cfg, inp).targets[cand]
    assert t.argmax(1).tolist() == [inp.vocab.index(truth[inp.rows[i].id]) for i in cand]
    assert (t.max(1).values > 0.9).all()  # a = 13/14 (12 exact rows, all right) over 3 candidates
    inp.asr_bonus = None
    assert torch.allclose(_module(cfg, inp).targets[cand].max(1).values, torch.tensor(1 / 3))

    cfg_file = tmp_path / "ft.yaml"
    cfg_file.write_text(yaml.safe_dump({"trainer": {"batch_size": 16, "accelerator": "cpu", "devices": "1",
                                                    "progress": False}, "min_steps": 0}))
    res = CliRunner().invoke(app, ["finetune", str(manifest), "--pretrained", "none", "--out",
                                   str(tmp_path / "ft"), "--config", str(cfg_file), "--truth", str(tf),
                                   "--epochs", "1",
                                   "--set", "asr_prior=pocketsphinx"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "ft" / "metrics.json").read_text())["asr_prior"]
    assert info["exact_hits"] == info["exact_rows"] == 12 and info["accuracy"] == pytest.approx(13 / 14)
    assert len(fake.calls) == 2  # the run's own cache folder: decoded again there


def test_distill_targets_take_the_votes_and_inherit_the_setting(tmp_path, fake_decoder):
    """An untrained teacher's targets pick the truth at chance; with always-right votes, on every
    candidate row. A teacher run made with the prior passes it on (``asr_prior: auto``)."""
    from plcli.config import Config, DataConfig, FeatureConfig, TrainerConfig, opt
    from plcli.data.validate import load_rows
    from plcli.distill import DistillConfig, run
    from plcli.models.classifier import Classifier, save_model
    from plcli.runs import save_config
    from tests.conftest import write_dataset, write_truth

    manifest, truth = write_dataset(tmp_path / "data", n=30)
    tf = write_truth(tmp_path / "truth.jsonl", truth)
    fake_decoder(_oracle_votes(manifest, truth))
    vocab = Vocabulary.from_rows(load_rows([manifest]).rows)
    fc = FeatureConfig(clip_seconds=0.7)

    def teacher(name: str, prior: str) -> Path:
        from dataclasses import dataclass, field

        @dataclass
        class _T(Config):
            data: DataConfig = opt(factory=DataConfig, help="")
            trainer: TrainerConfig = opt(factory=TrainerConfig, help="")
            features: FeatureConfig = opt(factory=lambda: fc, help="")
            asr_prior: str = field(default=prior)

        d = tmp_path / name
        d.mkdir()
        torch.manual_seed(0)
        save_model(d / "model.pt", Classifier("tcresnet", fc.n_mels, len(vocab)).eval(), vocab, fc,
                   "finetune")
        save_config(d, _T(), "finetune")
        return d

    def distill(t: Path, out: str, **over) -> dict:
        cfg = DistillConfig(out=str(tmp_path / out), teacher=str(t), truth=str(tf), views=2,
                            **{"rounds": 1, "ctc_epochs": 0, **over})
        cfg.data.manifests = [str(manifest)]
        cfg.trainer = TrainerConfig(epochs=1, batch_size=8, accelerator="cpu", devices="1", progress=False)
        cfg.validate()
        return run(cfg, log=lambda *_: None)

    plain = distill(teacher("t-none", "none"), "s-none")
    voted = distill(teacher("t-asr", "pocketsphinx"), "s-asr")  # auto: inherited
    assert "asr_prior" not in plain and voted["asr_prior"]["kind"] == "pocketsphinx"
    assert voted["asr_prior"]["scale"] == pytest.approx(2.0)  # the rounds' temperature
    assert voted["targets_disambiguation_acc_initial"] == 1.0
    assert plain["targets_disambiguation_acc_initial"] < 0.9
    from bench.vote import target_accuracy

    # the table recomputed offline: at the run's scale (T = 2) the run's own; without the vote the plain one
    tables = target_accuracy(tmp_path / "s-asr", ["teacher"], [0.0, 2.0])
    assert tables["targets"]["teacher"][2.0] == voted["targets_disambiguation_acc_initial"]
    assert tables["targets"]["teacher"][0.0] == plain["targets_disambiguation_acc_initial"]
    assert tables["rows"] > 0 and tables["temperature"] == 2.0
    off = distill(tmp_path / "t-asr", "s-off", asr_prior="none")
    assert "asr_prior" not in off
    once = distill(tmp_path / "t-asr", "s-once", asr_rounds=0)  # the teacher's training took it
    assert "asr_prior" not in once and once["targets_disambiguation_acc_initial"] < 0.9

    # the default (asr_rounds 1) with 3 rounds: round 1's targets take the vote; rounds 2 and 3 take their
    # teacher's as they are
    distill(tmp_path / "t-asr", "s-rounds", rounds=3)
    rounds = [
        json.loads((tmp_path / "s-rounds" / f"round{k}" / "metrics.json").read_text()) for k in (1, 2, 3)
    ]
    assert [("asr_prior" in m) for m in rounds] == [True, False, False]
    assert rounds[0]["targets_disambiguation_acc_initial"] == 1.0
    from plcli.runs import read_run_config

    saved = read_run_config(tmp_path / "s-rounds")
    assert saved["asr_rounds"] == 1 and saved["asr_ctc"] is True and saved["asr_prior"] == "pocketsphinx"


@pytest.mark.parametrize(
    ("asr_rounds", "asr_ctc", "rounds", "takes"),
    [
        (None, True, 2, [True, True, True, True]),  # every round, the CTC phase and its refit
        (0, True, 2, [False, False, True, True]),  # the CTC steps follow asr_ctc alone
        (1, True, 2, [True, False, True, True]),
        (1, False, 2, [True, False, False, False]),
        (0, False, 2, [False, False, False, False]),
        (None, False, 2, [True, True, False, False]),
        (5, True, 2, [True, True, True, True]),
    ],
)
def test_which_distill_steps_take_the_vote(asr_rounds, asr_ctc, rounds, takes):
    from plcli.distill import DistillConfig
    from plcli.distill.plan import takes_vote

    cfg = DistillConfig(rounds=rounds, asr_rounds=asr_rounds, asr_ctc=asr_ctc)
    assert [takes_vote(cfg, k) for k in range(1, 5)] == takes  # steps 3 and 4: a CTC start and a refit


def test_auto_takes_pocketsphinx_where_it_is_installed(monkeypatch):
    import importlib.util

    from plcli.errors import UserError

    real = importlib.util.find_spec
    assert asr_prior.resolve("none") == "none" and asr_prior.resolve("pocketsphinx") == "pocketsphinx"
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "pocketsphinx" else real(name, *a))
    assert asr_prior.resolve("auto") == "pocketsphinx"
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pocketsphinx" else real(name, *a))
    assert asr_prior.resolve("auto") == "none"
    with pytest.raises(UserError):
        asr_prior.resolve("kaldi")


def test_the_pipeline_does_not_import_the_benchmark():
    """The vote's decoder lives in plcli.grammar: the command and its stages load no benchmark module
    (scripts/bench/, imported as ``bench``; it was plcli.bench)."""
    import subprocess
    import sys

    code = (
        "import sys; import plcli.cli, plcli.finetune, plcli.distill, plcli.asr_prior as p, plcli.grammar; "
        "p.resolve('auto'); print(sorted(m for m in sys.modules "
        "if m == 'bench' or m.startswith(('bench.', 'plcli.bench'))))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_pseudo_positive_groups_join_exact_labels_and_votes(tmp_path, fake_decoder, monkeypatch):
    from plcli.data.labels import LabelNormalizer
    from plcli.errors import UserError
    from plcli.pretrain import PretrainConfig, _pseudo_groups

    rows = _rows(
        tmp_path,
        [["a b", "c d"], ["c d", "e f"], [], ["e f", "g h"], ["a b", "e f"], ["c d", "a b"]],
        [None, "C d!", None, None, None, None],
    )
    # r3: no decoding; right on r1
    fake_decoder({"r0.wav": "c d", "r1.wav": "c d", "r4.wav": "a b", "r5.wav": "c d"})
    cfg = PretrainConfig(pseudo_positives=0.5)
    cfg.data.cache_dir = str(tmp_path / "cache")
    monkeypatch.setattr(asr_prior, "resolve", lambda kind: "pocketsphinx")
    vocab = Vocabulary.from_rows(rows, LabelNormalizer(cfg.data.labels))
    g = _pseudo_groups(cfg, rows, vocab, log=lambda *_: None)
    # r0 (vote), r1 (exact label, normalised) and r5 (vote) say "c d"; r4 "a b"; r2 and r3 nothing
    assert g[0] == g[1] == g[5] >= 0 and g[4] >= 0 and g[4] != g[0] and g[2] == g[3] == -1
    monkeypatch.setattr(asr_prior, "resolve", lambda kind: "none")
    with pytest.raises(UserError, match="needs a recogniser"):
        _pseudo_groups(cfg, rows, vocab, log=lambda *_: None)


def test_pretrain_with_pseudo_positives_runs_through_the_cli(tmp_path, tiny_data, fake_decoder, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from plcli.cli import app
    from tests.test_pretrain import tiny_config

    manifest, _ = tiny_data
    fake = fake_decoder({})  # the recogniser names nothing: the exact labels alone form the groups
    monkeypatch.setattr(asr_prior, "resolve", lambda kind: "pocketsphinx")
    out = tmp_path / "pre"
    res = CliRunner().invoke(
        app,
        [
            "pretrain",
            str(manifest),
            "--out",
            str(out),
            "--config",
            tiny_config(tmp_path),
            "--epochs",
            "1",
            "--set",
            "pseudo_positives=1.0",
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(fake.calls) == 1 and "clips grouped by exact label or vote" in res.output
    assert yaml.safe_load((out / "config.yaml").read_text())["pseudo_positives"] == 1.0
    res = CliRunner().invoke(
        app,
        [
            "pretrain",
            str(manifest),
            "--out",
            str(tmp_path / "online"),
            "--config",
            tiny_config(tmp_path),
            "--set",
            "online_augment=true",
            "--set",
            "pseudo_positives=0.5",
        ],
    )
    assert res.exit_code != 0 and "pseudo_positives draws from the cached views" in res.output


def test_pretrain_with_transcript_ctc_runs_through_the_cli(tmp_path, tiny_data, fake_decoder, monkeypatch):
    import json

    import yaml
    from typer.testing import CliRunner

    from plcli.cli import app
    from plcli.pretrain import load_pretrained
    from tests.test_pretrain import tiny_config

    manifest, _ = tiny_data
    fake_decoder({})  # the recogniser names nothing: the exact labels alone are transcripts
    monkeypatch.setattr(asr_prior, "resolve", lambda kind: "pocketsphinx")
    out = tmp_path / "pre"
    res = CliRunner().invoke(
        app,
        [
            "pretrain",
            str(manifest),
            "--out",
            str(out),
            "--config",
            tiny_config(tmp_path),
            "--epochs",
            "1",
            "--set",
            "transcript_ctc=2",
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    exact = sum(json.loads(line).get("label") is not None for line in manifest.read_text().splitlines())
    assert m["transcript_rows"] == exact > 0 and m["train_transcript_ctc"] > 0
    assert yaml.safe_load((out / "config.yaml").read_text())["transcript_ctc"] == 2.0
    module = load_pretrained(out)  # what finetune loads: the head's weights come back with it
    assert module.transcript_head is not None and module.hparams.transcript_weight == 2.0
    # where it cannot run, pretraining goes on without it and says why
    monkeypatch.setattr(asr_prior, "resolve", lambda kind: "none")
    res = CliRunner().invoke(
        app,
        [
            "pretrain",
            str(manifest),
            "--out",
            str(tmp_path / "novote"),
            "--config",
            tiny_config(tmp_path),
            "--epochs",
            "1",
            "--set",
            "transcript_ctc=1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "transcript CTC off: no recogniser" in res.output
    assert "transcript_rows" not in json.loads((tmp_path / "novote" / "metrics.json").read_text())
    assert load_pretrained(tmp_path / "novote").transcript_head is None


def test_transcript_ctc_is_off_where_it_cannot_run(monkeypatch):
    from plcli.pretrain import PretrainConfig, _transcripts_on

    monkeypatch.setattr(asr_prior, "resolve", lambda kind: "pocketsphinx")
    said = []
    assert _transcripts_on(PretrainConfig(transcript_ctc=1.0), said.append) and not said
    assert not _transcripts_on(PretrainConfig(transcript_ctc=0.0), said.append) and not said
    assert not _transcripts_on(PretrainConfig(transcript_ctc=1.0, online_augment=True), said.append)
    assert not _transcripts_on(PretrainConfig(transcript_ctc=1.0, encoder="resnet2d"), said.append)
    assert "online_augment" in said[0] and "resnet2d" in said[1]


def test_transcript_loss_is_the_mean_ctc_loss_of_the_clips_with_a_transcript():
    """Against a slow reference: F.ctc_loss one clip at a time, clips without a transcript left out."""
    import torch.nn.functional as F

    from plcli.models.ctc import encoder_frames
    from plcli.pretrain import PretrainModule

    torch.manual_seed(0)
    m = PretrainModule(n_mels=16, transcript_tokens=6, transcript_weight=1.0).eval()
    m.transcript_targets = torch.tensor([[1, 2, 3], [4, 4, 1], [1, 1, 1], [5, 1, 2]])
    m.transcript_lengths = torch.tensor([3, 2, 0, 1])
    x, idx = torch.randn(4, 16, 40), torch.tensor([3, 0, 2, 1])
    got = m.transcript_loss(x, idx)
    ref = []
    for b, i in enumerate(idx.tolist()):
        n = int(m.transcript_lengths[i])
        if n == 0:
            continue
        frames = F.interpolate(
            encoder_frames(m.encoder, x[b : b + 1], tap=3), scale_factor=2.0, mode="nearest"
        )
        lp = m.transcript_head(frames).float()
        ref.append(
            F.ctc_loss(
                lp,
                m.transcript_targets[i : i + 1, :n],
                torch.tensor([lp.shape[0]]),
                torch.tensor([n]),
                reduction="sum",
            )
            / n
        )
    assert torch.allclose(got, torch.stack(ref).mean(), atol=1e-5)
    m.transcript_lengths = torch.zeros(4, dtype=torch.long)
    assert float(m.transcript_loss(x, idx).detach()) == 0.0


def test_pseudo_transcripts_ignore_a_recogniser_no_better_than_chance(tmp_path, fake_decoder, monkeypatch):
    """A vote that misses every exact row (pocketsphinx's English on another language) names no
    pseudo-transcript: only the exact labels do."""
    from plcli.pretrain import PretrainConfig, _pseudo_texts

    cands = [["a b", "c d"], ["a b", "c d"], ["c d", "e f"], ["a b", "e f"]]
    rows = _rows(tmp_path, cands, ["a b", "c d", None, None])
    cfg = PretrainConfig(transcript_ctc=1.0)
    cfg.data.cache_dir = str(tmp_path / "cache")
    monkeypatch.setattr(asr_prior, "resolve", lambda kind: "pocketsphinx")
    said: list[str] = []
    fake_decoder({"r0.wav": "c d", "r1.wav": "a b", "r2.wav": "e f", "r3.wav": "a b"})  # wrong on both
    assert _pseudo_texts(cfg, rows, said.append, "transcript_ctc") == ["a b", "c d", None, None]
    assert any("no better than chance" in m for m in said)
    cfg.data.cache_dir = str(tmp_path / "cache2")
    fake_decoder({"r0.wav": "a b", "r1.wav": "c d", "r2.wav": "e f", "r3.wav": "a b"})  # right on both
    assert _pseudo_texts(cfg, rows, said.append, "transcript_ctc") == ["a b", "c d", "e f", "a b"]
