"""Distillation: the teacher's candidate-constrained targets, refinement, and tiny CPU runs with resume."""

from __future__ import annotations

import json
from dataclasses import dataclass

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from conftest import write_dataset, write_truth

from plcli.config import Config, DataConfig, FeatureConfig, TrainerConfig, opt
from plcli.data.augment import AugmentConfig
from plcli.data.datasets import candidate_matrix
from plcli.data.labels import Vocabulary
from plcli.data.manifest import Row
from plcli.data.validate import load_rows
from plcli.distill import (
    CANDIDATE,
    DROPPED,
    EXACT,
    FREE,
    DistillConfig,
    refine_targets,
    resolve_student,
    run,
    teacher_targets,
)
from plcli.errors import UserError
from plcli.models.classifier import Classifier, load_model, save_model
from plcli.runs import save_config

# -- references on hand-made tensors ---------------------------------------------------------------


def ref_targets(logits, mask, y, t, threshold):
    """Loop reference: per row and view, softmax(z / T) over the candidates (all classes if none)."""
    v, n, c = logits.shape
    targets = torch.zeros(n, c, dtype=torch.float64)
    kinds = []
    for i in range(n):
        allowed = [j for j in range(c) if mask[i, j]] or list(range(c))
        conf = 0.0
        for k in range(v):
            e = {j: float(torch.exp(logits[k, i, j].double() / t)) for j in allowed}
            z = sum(e.values())
            for j in allowed:
                targets[i, j] += e[j] / z / v
            conf_k = torch.softmax(logits[k, i].double(), 0)
            conf = conf + conf_k / v
        if y[i] >= 0:
            targets[i] = 0.0
            targets[i, y[i]] = 1.0
            kinds.append(EXACT)
        elif mask[i].any():
            kinds.append(CANDIDATE)
        else:
            kinds.append(FREE if float(conf.max()) >= threshold else DROPPED)
    return targets, kinds


MASK = torch.tensor(
    [
        [1, 1, 0, 0],  # two candidates
        [0, 0, 1, 0],  # a single candidate -> one-hot whatever the logits
        [0, 0, 0, 0],  # no candidates (confident teacher)
        [0, 0, 0, 0],  # no candidates (unsure teacher)
        [0, 1, 1, 1],  # exact row
    ],
    dtype=torch.bool,
)
Y = torch.tensor([-1, -1, -1, -1, 2])


def _logits(views: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(views, 5, 4, generator=g)
    z[:, 2] = torch.tensor([6.0, 0.0, 0.0, 0.0])  # top-1 probability ~0.99
    z[:, 3] = torch.tensor([0.2, 0.0, 0.1, 0.0])  # ~0.28
    return z


@pytest.mark.parametrize("t", [1.0, 0.5, 3.0])
@pytest.mark.parametrize("views", [1, 3])
def test_teacher_targets_match_reference(t, views):
    z = _logits(views, seed=views)
    targets, kind, conf = teacher_targets(z if views > 1 else z[0], MASK, Y, t, confidence=0.5)
    ref, ref_kind = ref_targets(z, MASK, Y, t, 0.5)
    torch.testing.assert_close(targets.double(), ref, atol=1e-6, rtol=1e-6)
    assert kind.tolist() == ref_kind == [CANDIDATE, CANDIDATE, FREE, DROPPED, EXACT]
    assert targets[1].tolist() == [0.0, 0.0, 1.0, 0.0]  # single candidate
    assert (targets[0, 2:] == 0).all() and targets[0, :2].min() > 0
    torch.testing.assert_close(targets.sum(1), torch.ones(5))
    assert conf.shape == (5,) and conf[2] > 0.95 and conf[3] < 0.5


def test_temperature_softens_candidate_targets_by_hand():
    # candidates {0, 1} with logits (0, 2 ln 2): T=1 gives (1/5, 4/5), T=2 gives (1/3, 2/3)
    z = torch.tensor([[0.0, 2 * np.log(2.0), 9.0]])
    m = torch.tensor([[True, True, False]])
    for t, expected in ((1.0, [0.2, 0.8, 0.0]), (2.0, [1 / 3, 2 / 3, 0.0])):
        out, kind, _ = teacher_targets(z, m, torch.tensor([-1]), t, 0.5)
        torch.testing.assert_close(out, torch.tensor([expected]))
        assert kind.tolist() == [CANDIDATE]


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.99, 1.0])
def test_confidence_threshold_for_rows_without_candidates(threshold):
    z = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # top-1 0.87, 0.58, 1/3
    conf = torch.softmax(z, 1).amax(1)
    _, kind, got = teacher_targets(
        z, torch.zeros(3, 3, dtype=torch.bool), torch.tensor([-1, -1, -1]), 2.0, threshold
    )
    torch.testing.assert_close(got, conf)
    assert kind.tolist() == [FREE if c >= threshold else DROPPED for c in conf.tolist()]
    # the confidence is the teacher's own (T = 1) probability, not the softened one
    _, kind_t, _ = teacher_targets(
        z, torch.zeros(3, 3, dtype=torch.bool), torch.tensor([-1, -1, -1]), 10.0, 0.8
    )
    assert kind_t.tolist() == [FREE, DROPPED, DROPPED]


def test_teacher_targets_reject_bad_input():
    with pytest.raises(ValueError, match="shapes"):
        teacher_targets(
            torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.bool), torch.tensor([-1, -1]), 1.0, 0.5
        )
    with pytest.raises(ValueError, match="confidence"):
        teacher_targets(
            torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), torch.tensor([-1, -1]), 1.0, 1.5
        )
    with pytest.raises(ValueError, match="temperature"):
        teacher_targets(
            torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool), torch.tensor([-1, -1]), 0.0, 0.5
        )


def test_unknown_candidates_are_dropped_and_all_unknown_rows_have_none(tmp_path):
    vocab = Vocabulary.build(["yes", "no", "maybe"])
    rows = [
        Row("a", tmp_path / "a.wav", ["Yes!", "never heard"]),
        Row("b", tmp_path / "b.wav", ["foo", "bar"]),
    ]
    mask = torch.from_numpy(candidate_matrix(rows, vocab))
    assert mask.tolist() == [[False, False, True], [False, False, False]]  # keys sorted: maybe, no, yes
    z = torch.tensor([[0.0, 5.0, 0.0], [0.0, 5.0, 0.0]])
    targets, kind, _ = teacher_targets(z, mask, torch.tensor([-1, -1]), 1.0, 0.5)
    assert kind.tolist() == [CANDIDATE, FREE]
    assert targets[0].tolist() == [0.0, 0.0, 1.0]  # the one known candidate, whatever the teacher says
    torch.testing.assert_close(targets[1], torch.softmax(z[1], 0))  # the teacher's full distribution


def test_refine_targets_by_hand():
    t = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    logits = torch.tensor([[np.log(3.0), 0.0, 7.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, True, False], [False, False, True]])
    out = refine_targets(t, logits, mask, 0.5)
    # row 0: student restricted to {0, 1} is (3/4, 1/4) -> 0.5 * (0.5, 0.5) + 0.5 * (0.75, 0.25)
    torch.testing.assert_close(out, torch.tensor([[0.625, 0.375, 0.0], [0.0, 0.0, 1.0]]))
    torch.testing.assert_close(refine_targets(t, logits, mask, 0.0), t)
    with pytest.raises(ValueError):
        refine_targets(t, logits, mask, 1.5)


# -- tiny runs -------------------------------------------------------------------------------------


@dataclass
class _TeacherConfig(Config):
    """The parts of a finetune config.yaml that distill reads."""

    data: DataConfig = opt(factory=DataConfig)
    trainer: TrainerConfig = opt(factory=TrainerConfig)
    augment: AugmentConfig = opt(factory=AugmentConfig)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny data, an (untrained) teacher run directory, a truth file and a shared feature cache."""
    root = tmp_path_factory.mktemp("distill")
    manifest, truth = write_dataset(root / "data", n=30)
    truth_file = write_truth(root / "truth.jsonl", truth)
    vocab = Vocabulary.from_rows(load_rows([manifest]).rows)
    fc = FeatureConfig(clip_seconds=0.7)
    teacher = root / "teacher"
    teacher.mkdir()
    torch.manual_seed(0)
    save_model(
        teacher / "model.pt", Classifier("tcresnet", fc.n_mels, len(vocab)).eval(), vocab, fc, "finetune"
    )
    tc = _TeacherConfig()
    tc.data.val_fraction = 0.25
    tc.trainer.seed = 3
    save_config(teacher, tc, "finetune")
    return {
        "manifest": manifest,
        "truth": truth_file,
        "teacher": teacher,
        "cache": root / "cache",
        "root": root,
    }


def _cfg(world, out, **over) -> DistillConfig:
    # ctc_epochs 0: a one-round run stays one flat run directory (the CTC phase: tests/test_ctc_pipeline.py)
    cfg = DistillConfig(out=str(out), teacher=str(world["teacher"]), truth=str(world["truth"]), views=2,
                        rounds=1, ctc_epochs=0)
    cfg.data.manifests = [str(world["manifest"])]
    cfg.data.cache_dir = str(world["cache"])
    cfg.trainer = TrainerConfig(
        epochs=1,
        batch_size=8,
        accelerator="cpu",
        devices="1",
        progress=False,
        num_workers=0,
        log_every_n_steps=1,
    )
    for k, v in over.items():
        cfg.override({k: v})
    cfg.validate()
    return cfg


class _TableAtStart(L.Callback):
    def on_train_start(self, trainer, module):
        self.table = module.targets.detach().clone()


def test_tiny_distill_run_and_resume(world, tmp_path):
    out = tmp_path / "student"
    cfg = _cfg(world, out, refine=True, refine_start=0.0, refine_momentum=0.5)
    m = run(cfg, log=lambda *_: None)
    for f in (
        "config.yaml",
        "vocab.json",
        "metrics.json",
        "model.pt",
        "targets.npy",
        "targets.json",
        "checkpoints/last.ckpt",
        "logs/version_0/metrics.csv",
    ):
        assert (out / f).exists(), f
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["stage"] == "distill" and saved["student"] == "tcresnet-small"
    # the teacher's held-out split and label normalisation are inherited
    assert saved["data"]["val_fraction"] == 0.25 and m["held_out"] == {"fraction": 0.25, "seed": 3}
    _, teacher_vocab, _ = load_model(world["teacher"])
    assert (
        json.loads((out / "vocab.json").read_text()) == teacher_vocab.to_dict()
    )  # the student uses the teacher's
    disk = json.loads((out / "metrics.json").read_text())
    assert disk == m and m["stage"] == "distill" and m["epochs"] == 1
    steps_per_epoch = m["global_step"]
    n_train = sum(m["training_rows"].values())
    drop_last = n_train >= 16 or n_train % 8 == 1
    assert steps_per_epoch == (n_train // 8 if drop_last else -(-n_train // 8))
    assert m["held_out_exact"] > 0 and 0.0 <= m["val_acc"] <= 1.0 and 0.0 <= m["val_acc_within"] <= 1.0
    assert 0.0 <= m["covering_rate"] <= 1.0 and m["disambiguation_rows"] == m["training_rows"]["candidate"]
    assert (
        m["no_candidate_rows_dropped"] + m["training_rows"]["no_candidate"] == 2
    )  # the fixture's unlabelled rows

    student, vocab, fc = load_model(out)
    assert student.kwargs["encoder"] == "tcresnet-small" and fc.clip_seconds == 0.7
    # --abstain's threshold: the 0.95 quantile of none_of_these on the held-out rows, stored with the model
    ab = m["abstain"]
    assert 0.0 <= ab["threshold"] <= 1.0 and ab["false_abstain"] == 0.05
    assert 0 < ab["rows"] <= m["held_out_exact"]
    assert student.extra["abstain"] == ab
    assert torch.load(out / "model.pt", weights_only=True)["stage"] == "distill"
    # the refined target table is part of the checkpoint and differs from the teacher's targets
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    table = ckpt["state_dict"]["targets"]
    teacher_table = torch.from_numpy(np.load(out / "targets.npy"))
    kind = np.asarray(json.loads((out / "targets.json").read_text())["kind"])
    initial = teacher_table[kind != DROPPED]
    assert table.shape == initial.shape and not torch.allclose(table, initial)
    torch.testing.assert_close(table.sum(1), torch.ones(len(table)))

    # resume to 2 epochs: the step count continues and training starts from the refined table
    cb = _TableAtStart()
    m2 = run(
        _cfg(
            world,
            out,
            **{
                "trainer.resume": "auto",
                "trainer.epochs": 2,
                "refine": True,
                "refine_start": 0.0,
                "refine_momentum": 0.5,
            },
        ),
        log=lambda *_: None,
        callbacks=[cb],
    )
    assert m2["epochs"] == 2 and m2["global_step"] == 2 * steps_per_epoch
    assert m2["targets_reused"] is True
    torch.testing.assert_close(cb.table, table)
    assert len(m2["val_acc_history"]) == 2


def _teacher_of(root, manifest, language: str = "auto"):
    """An untrained teacher run over ``manifest``'s messages, its config saying ``language``."""
    vocab = Vocabulary.from_rows(load_rows([manifest]).rows)
    fc = FeatureConfig(clip_seconds=0.7)
    root.mkdir()
    save_model(root / "model.pt", Classifier("tcresnet", fc.n_mels, len(vocab)).eval(), vocab, fc, "finetune")
    tc = _TeacherConfig()
    tc.data.language = language
    save_config(root, tc, "finetune")
    return root


def test_the_language_and_the_ctc_tokens_are_settled_before_the_rounds(tmp_path):
    from plcli.distill import resolve_ctc

    ru, _ = write_dataset(tmp_path / "ru", n=12, labels=["Привет", "Пока", "Я дома.", "До завтра!"])
    cfg = DistillConfig(teacher=str(_teacher_of(tmp_path / "t-ru", ru)))
    cfg.data.manifests = [str(ru)]
    logged = []
    resolve_ctc(cfg, logged.append)
    assert cfg.data.language == "ru" and "language: ru (detected" in logged[0]
    assert cfg.ctc.weight == 1.0 and cfg.ctc_other_tokens
    cfg = DistillConfig(teacher=str(_teacher_of(tmp_path / "t-de", ru, language="de")))
    cfg.data.manifests = [str(ru)]
    resolve_ctc(cfg, logged.append)
    assert cfg.data.language == "de" and logged[-1] == "language: de (the teacher's)"


def test_a_chat_without_ctc_tokens_trains_without_the_ctc_head(world, tmp_path):
    """Messages with no letter or digit give the character tokens nothing: the CTC head is off and
    the log says so (the run does not fail inside the head)."""
    manifest, _ = write_dataset(tmp_path / "data", n=24, labels=["👍", "❤️", "🙏", "😂"])
    over = {"teacher": _teacher_of(tmp_path / "teacher", manifest), "manifest": manifest,
            "cache": tmp_path / "c"}
    cfg = _cfg({**world, **over}, tmp_path / "out")
    cfg.ctc_epochs, cfg.truth = None, None  # the default CTC phase
    logged = []
    m = run(cfg, log=logged.append)
    assert any(
        line.startswith("CTC head off: the teacher's 4 message texts have no char token") for line in logged
    )
    assert "ranking" not in m and not load_model(tmp_path / "out")[0].has_ctc
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["ctc"]["weight"] == 0.0


def test_distill_without_refine_and_with_teacher_views(world, tmp_path):
    out = tmp_path / "plain"
    m = run(
        _cfg(world, out, refine=False, teacher_views=2, confidence=0.0, student="tcresnet"),
        log=lambda *_: None,
    )
    assert m["refine"] is False and m["no_candidate_rows_dropped"] == 0  # threshold 0 keeps every row
    assert m["targets_disambiguation_acc_initial"] == m["targets_disambiguation_acc_final"]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert "targets" not in ckpt["state_dict"]  # unchanged table: rebuilt from targets.npy on resume
    assert load_model(out)[0].kwargs["encoder"] == "tcresnet"


def test_distill_refuses_a_run_without_a_classifier(world, tmp_path):
    from plcli.errors import UserError

    bad = tmp_path / "pre"
    bad.mkdir()
    save_config(bad, _TeacherConfig(), "pretrain")
    with pytest.raises(UserError, match="is a pretrain run and has no classifier"):
        run(_cfg(world, tmp_path / "s", teacher=str(bad)), log=lambda *_: None)


def test_distill_cli(world, tmp_path):
    from typer.testing import CliRunner

    from plcli.cli import app

    conf = tmp_path / "tiny.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "views": 2,
                "data": {"cache_dir": str(world["cache"])},
                "trainer": {
                    "batch_size": 8,
                    "accelerator": "cpu",
                    "devices": "1",
                    "progress": False,
                    "num_workers": 0,
                },
            }
        )
    )
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app,
        [
            "distill",
            str(world["manifest"]),
            "--teacher",
            str(world["teacher"]),
            "--out",
            str(out),
            "--config",
            str(conf),
            "--epochs",
            "1",
            "--set",
            "temperature=3",
            "--set",
            "refine=true",
            "--student",
            "tcresnet-small",
            "--seed",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["temperature"] == 3.0 and saved["refine"] is True and saved["trainer"]["seed"] == 1
    assert json.loads((out / "metrics.json").read_text())["temperature"] == 3.0


def test_prior_correction_divides_by_candidate_share():
    """With log_prior, candidate targets are softmax(z/T) / pi restricted and renormalised (a reference
    loop)."""
    from plcli.distill import teacher_targets
    from plcli.losses import candidate_log_prior

    torch.manual_seed(0)
    logits = torch.randn(4, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
                        dtype=torch.bool)
    y = torch.full((4,), -1)
    log_prior = candidate_log_prior(mask)
    counts = mask.double().sum(0) + 1
    prior = counts / counts.sum()
    torch.testing.assert_close(log_prior.double(), prior.log())
    T = 2.0
    got, _, _ = teacher_targets(logits, mask, y, T, 0.0, log_prior)
    for i in range(4):
        p = torch.softmax(logits[i] / T, 0)
        if mask[i].any():
            w = torch.where(mask[i], p / prior, torch.zeros_like(p))
            ref = w / w.sum()
        else:  # no candidates: the full distribution, uncorrected
            ref = p
        torch.testing.assert_close(got[i].double(), ref, rtol=1e-5, atol=1e-6)


def test_outside_weight_keeps_non_candidates_in_the_targets(world, tmp_path):
    """outside_weight lam: candidate rows' targets are softmax(z/T) / pi weighted 1 inside the set and lam
    outside (a reference loop); the run trains with it, and its targets are cached under their own key."""
    from plcli.distill import teacher_targets
    from plcli.losses import candidate_log_prior

    torch.manual_seed(1)
    logits = torch.randn(3, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    log_prior = candidate_log_prior(mask)
    got, _, _ = teacher_targets(logits, mask, torch.full((3,), -1), 2.0, 0.0, log_prior, outside=0.2)
    for i in range(2):
        w = torch.softmax(logits[i] / 2.0, 0) / log_prior.exp() * torch.where(mask[i], 1.0, 0.2)
        torch.testing.assert_close(got[i].double(), w / w.sum(), rtol=1e-5, atol=1e-6)
    assert (got[0][~mask[0]] > 0).all()
    m = run(_cfg(world, tmp_path / "alim", outside_weight=0.2), log=lambda *_: None)
    plain = run(_cfg(world, tmp_path / "plain"), log=lambda *_: None)
    t_alim = np.load(tmp_path / "alim" / "targets.npy")
    t_plain = np.load(tmp_path / "plain" / "targets.npy")
    assert m["rows"] == plain["rows"] and not np.allclose(t_alim, t_plain)
    assert yaml.safe_load((tmp_path / "alim" / "config.yaml").read_text())["outside_weight"] == 0.2


def test_distill_loss_mixes_the_candidate_likelihood():
    """cc_weight w: candidate rows get (1 - w) * soft CE + w * prior-corrected CC; other rows are
    untouched."""
    from plcli.distill import DistillModule
    from plcli.losses import CandidateLoss, SoftTargetCrossEntropy

    torch.manual_seed(0)
    c = 4
    student = dict(encoder="tcresnet-small", n_mels=8, num_classes=c, from_layer=0)
    logits = torch.randn(4, c)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    kind = torch.tensor([CANDIDATE, CANDIDATE, FREE, EXACT])
    y = torch.tensor([-1, -1, -1, 2])
    t = torch.softmax(torch.randn(4, c), 1) * mask.float()
    t[2] = torch.softmax(torch.randn(c), 0)
    t = t / t.sum(1, keepdim=True)
    log_prior = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    soft = SoftTargetCrossEntropy(2.0, reduction="none")(logits, t)
    cc = CandidateLoss(reduction="none")(logits, mask, log_prior)
    hard = torch.nn.functional.cross_entropy(logits[3:], y[3:])
    for w in (0.0, 0.8, 1.0):
        m = DistillModule(student, num_train=4, temperature=2.0, cc_weight=w)
        m.log_prior.copy_(log_prior)
        loss, _, _ = m.loss(logits, t, kind, y, mask)
        cand = (1 - w) * soft[:2] + w * cc[:2]
        expected = (cand.sum() + soft[2] + hard) / 4
        torch.testing.assert_close(loss, expected)


def test_distill_rounds(world, tmp_path):
    """rounds=2: round 2 distils round 1's student, keeps the first teacher's held-out rows, and resumes."""
    out = tmp_path / "rounds"
    # the distill seed differs from the teacher's (3): the held-out split must still be the teacher's
    cfg = _cfg(world, out, rounds=2, **{"trainer.seed": 11})
    m = run(cfg, log=lambda *_: None)
    for k in (1, 2):
        assert (out / f"round{k}" / "model.pt").exists() and (out / f"round{k}" / "metrics.json").exists()
    r1 = json.loads((out / "round1" / "metrics.json").read_text())
    r2 = json.loads((out / "round2" / "metrics.json").read_text())
    assert r1["teacher"] == str(world["teacher"]) and r2["teacher"] == str(out / "round1")
    assert r1["held_out"] == r2["held_out"] == {"fraction": 0.25, "seed": 3}
    assert len(m["rounds"]) == 2 and m["rounds"][1]["val_acc"] == r2["val_acc"]
    assert m["total_seconds"] == r1["total_seconds"] + r2["total_seconds"]
    assert m["teacher"] == str(world["teacher"]) and json.loads((out / "metrics.json").read_text()) == m
    assert (out / "model.pt").read_bytes() == (out / "round2" / "model.pt").read_bytes()
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (
        saved["rounds"] == 2 and saved["view_seed"] is not None and saved["teacher"] == str(world["teacher"])
    )
    assert load_model(out)[0].kwargs["encoder"] == "tcresnet-small"
    # resuming a finished run reuses both rounds (nothing is retrained)
    stamp = (out / "round1" / "model.pt").stat().st_mtime_ns
    lines = []
    m2 = run(_cfg(world, out, rounds=2, **{"trainer.seed": 11, "trainer.resume": "auto"}), log=lines.append)
    assert sum("already done" in str(x) for x in lines) == 2
    assert (out / "round1" / "model.pt").stat().st_mtime_ns == stamp and m2["rounds"] == m["rounds"]
    # the multi-round run is itself a valid teacher
    m3 = run(_cfg(world, tmp_path / "next", teacher=str(out)), log=lambda *_: None)
    assert m3["held_out"] == {"fraction": 0.25, "seed": 3}


def test_the_rounds_stop_once_the_targets_settle(world, tmp_path):
    """rounds_settle: a round whose targets name the previous round's top candidates on all but that share
    of the rows is not trained; the run keeps the previous round's student, and a resume stops alike."""
    out = tmp_path / "settled"
    lines = []
    # 1.0: any round after the first has settled unless every row changed its top candidate
    m = run(_cfg(world, out, rounds=3, rounds_settle=1.0), log=lines.append)
    assert (out / "round1" / "model.pt").exists() and not (out / "round2").exists()
    assert m["rounds_trained"] == 1 and m["rounds_settled_at"] == 2 and len(m["rounds"]) == 1
    assert [c["round"] for c in m["round_changes"]] == [2] and 0.0 <= m["round_changes"][0]["changed"] < 1.0
    assert any("round 2/3: not trained, the targets settled" in str(x) for x in lines)
    assert (out / "model.pt").read_bytes() == (out / "round1" / "model.pt").read_bytes()
    m2 = run(_cfg(world, out, rounds=3, rounds_settle=1.0, **{"trainer.resume": "auto"}), log=lambda *_: None)
    assert m2["rounds_trained"] == 1 and m2["round_changes"] == m["round_changes"]
    # 0: every round trains, and each round's change is recorded
    m3 = run(_cfg(world, tmp_path / "all", rounds=3, rounds_settle=0.0), log=lambda *_: None)
    assert m3["rounds_trained"] == 3 and m3["rounds_settled_at"] is None
    assert [c["round"] for c in m3["round_changes"]] == [2, 3]


def test_changed_share_counts_rows_trained_in_both_tables():
    from plcli.distill.targets import changed_share, top_candidates

    rng = np.random.default_rng(0)
    a, b = rng.random((50, 4)), rng.random((50, 4))
    ka, kb = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    both = [i for i in range(50) if ka[i] != DROPPED and kb[i] != DROPPED]
    expected = sum(int(np.argmax(a[i]) != np.argmax(b[i])) for i in both) / len(both)
    assert changed_share(top_candidates(a, ka), top_candidates(b, kb)) == pytest.approx(expected)
    assert changed_share(top_candidates(a, ka), top_candidates(a, ka)) == 0.0
    none = np.full(50, DROPPED)
    assert changed_share(top_candidates(a, none), top_candidates(b, kb)) == 0.0


class _StartOfEachRound(L.Callback):
    """The student's weights and the epoch budget when each round's training starts."""

    def __init__(self):
        self.starts = []

    def on_train_start(self, trainer, module):
        self.starts.append(({k: v.detach().clone() for k, v in module.model.state_dict().items()},
                            trainer.max_epochs))


def test_student_init_teacher_starts_from_the_teachers_encoder(world, tmp_path):
    """student_init teacher: a fresh student's encoder is a copy of the teacher's; its head is new."""
    teacher = load_model(world["teacher"])[0]
    rec = _StartOfEachRound()
    # seed 1: the fixture's teacher was drawn with seed 0, as a seed-0 student of its architecture would be
    cfg = _cfg(world, tmp_path / "init", student="tcresnet", student_init="teacher",
               **{"ctc.weight": 0.0, "trainer.seed": 1})
    run(cfg, log=lambda *_: None, callbacks=[rec])
    start = rec.starts[0][0]
    enc = {k: v for k, v in teacher.state_dict().items() if k.startswith("encoder.")}
    assert enc and all(torch.equal(start[k], v) for k, v in enc.items())
    # the student inherits the teacher's input normalisation (this teacher predates the option: utterance)
    assert load_model(tmp_path / "init")[0].encoder.norm.mode == "utterance"
    # from scratch, the same student does not start from the teacher's weights
    rec = _StartOfEachRound()
    run(_cfg(world, tmp_path / "scratch", student="tcresnet", **{"ctc.weight": 0.0, "trainer.seed": 1}),
        log=lambda *_: None, callbacks=[rec])
    assert not all(torch.equal(rec.starts[0][0][k], v) for k, v in enc.items() if v.is_floating_point())


@dataclass
class _PretrainedTeacherConfig(_TeacherConfig):
    pretrained: str = opt("", "the pretrain run the teacher's encoder came from")


def _teacher_copy(world, path, pretrained: str):
    """The fixture's teacher, its config.yaml saying which pretrain run (or none) its encoder came from."""
    import shutil

    shutil.copytree(world["teacher"], path)
    save_config(path, _PretrainedTeacherConfig(pretrained=pretrained), "finetune")
    return str(path)


def test_student_auto_takes_the_pretrained_encoder_on_small_data(world, tmp_path):
    """--student auto: the teacher's encoder, started from its weights, below small_data recordings
    when the teacher's encoder was pretrained; tcresnet-small from scratch otherwise."""
    pre = _teacher_copy(world, tmp_path / "pre", pretrained=str(tmp_path / "pretrain-run"))
    rand = _teacher_copy(world, tmp_path / "rand", pretrained="none")
    cases = [  # (teacher, small_data, student_init given) -> (student, init); the manifest has 30 rows
        (pre, 31, "auto", "tcresnet", "teacher"),
        (pre, 30, "auto", "tcresnet-small", "scratch"),  # not below
        (rand, 10_000, "auto", "tcresnet-small", "scratch"),  # nothing pretrained to pass on
        (str(world["teacher"]), 10_000, "auto", "tcresnet-small", "scratch"),  # a config without the field
        (pre, 31, "scratch", "tcresnet", "scratch"),  # an explicit init is kept
        (pre, 30, "teacher", "tcresnet", "teacher"),  # an explicit teacher init wants the teacher's encoder
    ]
    for teacher, small, init, student, want_init in cases:
        cfg = _cfg(world, tmp_path / "x", teacher=teacher, small_data=small, student_init=init)
        assert (cfg.student, cfg.student_init if init != "auto" else "auto") == ("auto", init)
        resolve_student(cfg, log=lambda *_: None)
        assert (cfg.student, cfg.student_init) == (student, want_init), (teacher, small, init)
    # an explicit student is never changed, and auto init then means scratch
    cfg = _cfg(world, tmp_path / "x", teacher=pre, small_data=10_000, student="tcresnet-wide")
    resolve_student(cfg, log=lambda *_: None)
    assert (cfg.student, cfg.student_init) == ("tcresnet-wide", "scratch")
    # a run records the resolved choice and starts from the teacher's encoder
    out = tmp_path / "run"
    rec = _StartOfEachRound()
    run(_cfg(world, out, teacher=pre, small_data=31, **{"ctc.weight": 0.0, "trainer.seed": 1}),
        log=lambda *_: None, callbacks=[rec])
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["student"], saved["student_init"]) == ("tcresnet", "teacher")
    enc = {k: v for k, v in load_model(world["teacher"])[0].state_dict().items() if k.startswith("encoder.")}
    assert enc and all(torch.equal(rec.starts[0][0][k], v) for k, v in enc.items())


def test_small_data_student_caps_the_batch(world, tmp_path):
    """Below small_data recordings the student that --student auto chooses (the teacher's encoder, or
    tcresnet-small from scratch after a teacher without pretraining) trains with batches of at most
    small_data_batch; a smaller --batch-size, small_data_batch 0 and larger data keep theirs."""
    pre = _teacher_copy(world, tmp_path / "pre", pretrained=str(tmp_path / "pretrain-run"))
    rand = _teacher_copy(world, tmp_path / "rand", pretrained="none")
    cases = [  # (teacher, small_data, batch_size, small_data_batch) -> batch size; 30 manifest rows
        (pre, 31, 256, 64, 64),
        (pre, 31, 32, 64, 32),
        (pre, 31, 256, 0, 256),
        (pre, 30, 256, 64, 256),  # not small: tcresnet-small from scratch
        (rand, 31, 256, 64, 64),  # small, nothing pretrained: tcresnet-small from scratch, capped
        (rand, 31, 256, 0, 256),
        (rand, 30, 256, 64, 256),
    ]
    for teacher, small, bs, cap, want in cases:
        cfg = _cfg(world, tmp_path / "x", teacher=teacher, small_data=small, small_data_batch=cap,
                   **{"trainer.batch_size": bs})
        resolve_student(cfg, log=lambda *_: None)
        assert cfg.trainer.batch_size == want, (teacher, small, bs, cap)
    # an explicit student is not the small-data choice: its batch is left alone
    cfg = _cfg(world, tmp_path / "x", teacher=pre, small_data=31, student="tcresnet",
               **{"trainer.batch_size": 256})
    resolve_student(cfg, log=lambda *_: None)
    assert cfg.trainer.batch_size == 256


def test_student_init_teacher_needs_the_teachers_architecture(world, tmp_path):
    cfg = _cfg(world, tmp_path / "bad", student="tcresnet-small", student_init="teacher",
               **{"ctc.weight": 0.0})
    with pytest.raises(UserError, match="student_init"):
        run(cfg, log=lambda *_: None)


def test_warm_started_rounds_begin_from_the_previous_student(world, tmp_path):
    """warm_start: round 2 starts from round 1's student (not a fresh network) and trains warm_epochs."""
    out = tmp_path / "warm"
    rec = _StartOfEachRound()
    cfg = _cfg(world, out, rounds=2, warm_start=True, warm_epochs=2,
               **{"ctc.weight": 0.0, "trainer.epochs": 1})
    m = run(cfg, log=lambda *_: None, callbacks=[rec])
    assert [e for _, e in rec.starts] == [1, 2]
    r1 = load_model(out / "round1")[0].state_dict()
    assert all(torch.equal(rec.starts[1][0][k], v) for k, v in r1.items())
    assert json.loads((out / "round2" / "metrics.json").read_text())["epochs"] == 2
    assert len(m["rounds"]) == 2
    # the run's config keeps its own epochs (a resume trains round 1 the same way)
    assert yaml.safe_load((out / "config.yaml").read_text())["trainer"]["epochs"] == 1
    # and a cold run's round 2 does not start from round 1
    rec = _StartOfEachRound()
    run(_cfg(world, tmp_path / "cold", rounds=2, warm_start=False, **{"ctc.weight": 0.0}),
        log=lambda *_: None, callbacks=[rec])
    r1 = load_model(tmp_path / "cold" / "round1")[0].state_dict()
    assert not all(torch.equal(rec.starts[1][0][k], v) for k, v in r1.items() if v.is_floating_point())


def test_ctc_augment_keeps_the_words_and_is_off_in_eval():
    """The CTC branch's tempo and VTLP: identity in eval mode or at 0; tempo resamples time to T / rate
    with rate in 1 +- tempo; VTLP keeps the shape and changes the values."""
    from plcli.distill import DistillModule

    student = dict(encoder="tcresnet-small", n_mels=16, num_classes=3, from_layer=0)
    torch.manual_seed(0)
    x = torch.randn(4, 16, 100)
    off = DistillModule(student, num_train=4)
    torch.testing.assert_close(off.train().ctc_augment(x), x)
    m = DistillModule(student, num_train=4, ctc_tempo=0.2, ctc_vtlp=0.1)
    torch.testing.assert_close(m.eval().ctc_augment(x), x)
    m.train()
    lengths = {m.ctc_augment(x).shape[-1] for _ in range(50)}
    assert min(lengths) >= round(100 / 1.2) and max(lengths) <= round(100 / 0.8)
    assert len(lengths) > 5  # the rate varies from step to step
    warp = DistillModule(student, num_train=4, ctc_vtlp=0.1).train()
    y = warp.ctc_augment(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    with pytest.raises(ValueError):
        DistillModule(student, num_train=4, ctc_vtlp=1.0)


def test_a_row_the_teacher_finds_untyped_leans_towards_a_row_without_candidates(tmp_path, world):
    """untyped u (plcli.screening): a candidate row's target is (1 - u) x its candidate target + u x
    softmax(z / T) over every class (a reference by hand); with untyped_targets the run reads the
    teacher's screened.json and its targets change; its folder carries the file on."""
    import shutil

    from plcli.losses import candidate_log_prior
    from plcli.screening import SCREEN_FILE, read_scores, write_scores

    torch.manual_seed(2)
    logits = torch.randn(2, 3, 4, dtype=torch.float64)  # (V, N, C)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    u = torch.tensor([0.25, 0.0, 0.9])  # the row without candidates ignores it
    prior = candidate_log_prior(mask)
    got, kind, _ = teacher_targets(logits, mask, torch.full((3,), -1), 2.0, 0.0, prior, untyped=u)
    plain, _, _ = teacher_targets(logits, mask, torch.full((3,), -1), 2.0, 0.0, prior)
    free = torch.softmax(logits / 2.0, dim=-1).mean(0)
    want = 0.75 * plain[0].double() + 0.25 * free[0]
    torch.testing.assert_close(got[0].double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1:], plain[1:])
    assert kind.tolist() == [CANDIDATE, CANDIDATE, FREE]
    with pytest.raises(ValueError):
        teacher_targets(logits, mask, torch.full((3,), -1), 2.0, 0.0, prior, untyped=torch.full((3,), 1.5))

    teacher = tmp_path / "teacher"
    shutil.copytree(world["teacher"], teacher)
    rows = load_rows([world["manifest"]]).rows
    cand = [r.id for r in rows if r.candidates and r.label is None]
    write_scores(teacher, cand[:4], np.array([0.9, 0.8, 0.1, 0.0]))
    np.testing.assert_allclose(read_scores(teacher, [cand[0], cand[3], cand[5]]), [0.9, 0.0, 0.0])
    run(_cfg(world, tmp_path / "s", teacher=str(teacher), untyped_targets=True), log=lambda *_: None)
    run(_cfg(world, tmp_path / "o", teacher=str(teacher)), log=lambda *_: None)  # off by default
    run(_cfg(world, tmp_path / "p"), log=lambda *_: None)
    t = {k: np.load(tmp_path / k / "targets.npy") for k in "sop"}
    assert not np.allclose(t["s"], t["p"]) and np.allclose(t["o"], t["p"])
    for k in "so":  # carried on either way, for a later distill that uses it
        assert (tmp_path / k / SCREEN_FILE).read_bytes() == (teacher / SCREEN_FILE).read_bytes()
    assert not (tmp_path / "p" / SCREEN_FILE).exists()
