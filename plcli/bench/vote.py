"""How often a distill round's target table names the truth, for several weights of the vote.

From the saved models of a distill run, recompute the target table that a round builds from its
teacher (the run's finetune teacher, or one of its rounds) on the candidate training rows, with
the recogniser's vote (``plcli.asr_prior``) added to the teacher's logits at a given scale (0: no
vote; 1: ``delta``, Bayes' posterior tempered as a whole; T: ``T * delta``, the rounds' own), and
score it against ``--truth``, in seconds instead of a distill run. A table's accuracy is not the
student's: on the long-tail set the ``delta`` tables were the better ones and the students trained on
them the worse (docs/asr-prior.md, "The vote's weight in the rounds"). ``scripts/vote_weight.py`` is
its command.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def target_accuracy(run: Path, teachers: Sequence[str], scales: Sequence[float] | None = None,
                    log=lambda *_: None) -> dict:
    """Share of the candidate training rows (no exact label, a known truth) whose target names the truth.

    Args:
        run: a distill run folder (its round 1 gives the data, the split and the temperature).
        teachers: ``"teacher"`` (the run's finetune teacher), a round folder name (``"round3"``) or a
            run or model path.
        scales: the vote's weights (default 0, 1 and the run's temperature T).

    Returns:
        ``{"rows": n, "vote_accuracy": a, "temperature": T, "targets": {teacher: {scale: share}}}``.
    """
    from plcli.asr_prior import prior_for
    from plcli.config import cache_dir
    from plcli.distill import DistillConfig, load_rows, open_cache, open_teacher, teacher_targets
    from plcli.inference import RowView, predict_logits
    from plcli.losses import candidate_log_prior
    from plcli.runs import read_upstream

    run = Path(run)
    first = read_upstream(run / "round1" if (run / "round1" / "config.yaml").is_file() else run, "RUN", ("distill",))
    cfg = first.as_config(DistillConfig)
    held = first.metrics()["held_out"]
    t0 = open_teacher(str(cfg.teacher))
    d = load_rows(cfg, t0.vocab, held["fraction"], held["seed"], log)
    bonus, info = prior_for(d.rows, t0.vocab, "pocketsphinx", cache_dir(cfg.data.cache_dir), cfg.asr_accuracy,
                            cfg.asr_workers, log)
    _, clean = open_cache(cfg.data, t0.features).features([r.audio for r in d.rows])
    T = cfg.temperature
    scales = [0.0, 1.0, T] if scales is None else [float(s) for s in scales]
    mask, y = torch.from_numpy(d.mask[d.pool]), torch.from_numpy(d.y[d.pool])
    log_prior = candidate_log_prior(torch.from_numpy(d.mask))
    truth, vote = d.truth[d.pool], bonus[d.pool]  # (P,), (P, C)
    rows = (d.mask[d.pool].sum(1) > 1) & (d.y[d.pool] < 0) & (truth >= 0)  # (P,) candidate rows with a truth
    out: dict = {}
    for name in teachers:
        path = cfg.teacher if name == "teacher" else (run / name if (run / name).exists() else Path(name))
        t = open_teacher(str(path))
        if t.vocab.keys != t0.vocab.keys:
            raise ValueError(f"{path}: its vocabulary is not the run's")
        z = predict_logits(t.model, RowView(clean, d.pool))  # (P, C)
        out[name] = {}
        for s in scales:
            zs = torch.from_numpy(z + s * vote)
            targets = teacher_targets(zs, mask, y, T, cfg.confidence, log_prior)[0].numpy()
            right = targets[rows].argmax(1) == truth[rows]
            out[name][s] = float(right.mean()) if rows.any() else float("nan")
    return {"rows": int(rows.sum()), "vote_accuracy": info["accuracy"], "temperature": T, "targets": out}
