"""Open-vocabulary benchmark: never-heard messages and the long tail, through the real CLI.

On a ``plcli demo-data`` folder (long-tail vocabulary, e.g. ``--vocabulary long-tail --phrases 500
--new-messages 0.15``): a seeded share of the training speakers becomes the validation split
(labelled from truth.jsonl, used only to choose the combined ranking and the CTC start). With
``--val-messages S`` a seeded share S of the training chat's messages is held out of training
altogether as well: their recordings join the validation rows and their texts leave the training
rows' candidate sets, so that the ranking is chosen on rows with never-heard messages among them,
as the test chat has (docs/ctc.md). Then
pretrain -> finetune -> distill run with their defaults (plus any ``--distill-args``), and the
student predicts the speaker-disjoint test set. Reported, as one JSON object (also written to
``WORK/result.json``):

- all-class accuracy (closed-set head) and within-candidate accuracy of the combined ranking, and
  of each scorer alone (``plcli evaluate``);
- never heard: within-candidate accuracy on test rows whose message is never the truth of a
  training recording (the held-out messages included), and on those whose message the training
  chat never has (``new_in_test_chat``: the pocketsphinx grammar row's never-heard rows);
- the long tail: the rarer half of the messages by training count; accuracy and macro-F1 of the
  ranking's answer on their test rows, and macro-F1 over every message with test rows.

    python scripts/bench_open_vocab.py --data lt --work runs-ov
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench.common import absolute_audio, hold_out_messages, split_speakers
from plcli.data.labels import LabelNormalizer
from plcli.metrics import per_class_metrics


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def sh(args: list[str], times: dict, name: str) -> None:
    print("$ " + " ".join(shlex.quote(a) for a in args), file=sys.stderr, flush=True)
    t = time.perf_counter()
    subprocess.run(args, check=True)
    times[name] = round(time.perf_counter() - t, 1)


def macro_f1(pred: list[str], true: list[str], classes: set[str]) -> float:
    """Mean F1 (``plcli.metrics.per_class_metrics``) over ``classes`` that occur in ``true``;
    predictions of any class count as false positives."""
    index = {k: i for i, k in enumerate(sorted(set(pred) | set(true)))}
    pc = per_class_metrics(np.array([index[k] for k in pred], dtype=np.int64),
                           np.array([index[k] for k in true], dtype=np.int64), len(index))
    f1 = [pc["f1"][index[c]] for c in classes if c in index and pc["support"][index[c]] > 0]
    return float(np.mean(f1)) if f1 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="plcli demo-data folder")
    ap.add_argument("--work", required=True, help="work folder (runs, manifests, result.json)")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="share of training speakers held out")
    ap.add_argument("--val-messages", type=float, default=0.0,
                    help="share of the training chat's messages held out of training: their recordings join "
                         "the validation rows and their texts leave the training rows' candidate sets, so "
                         "that the ranking is chosen with never-heard messages among the validation rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pretrain-args", default="", help="extra plcli pretrain arguments")
    ap.add_argument("--finetune-args", default="", help="extra plcli finetune arguments")
    ap.add_argument("--distill-args", default="", help="extra plcli distill arguments")
    ap.add_argument("--tag", default="",
                    help="suffix of the finetune/distill run folders (variants share pretrain)")
    a = ap.parse_args()
    plcli = str(Path(sys.executable).with_name("plcli"))
    data, work = Path(a.data).resolve(), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    norm = LabelNormalizer()
    truth = {r["id"]: r["label"] for r in read(data / "truth.jsonl")}
    train = absolute_audio(read(data / "train.jsonl"), data)
    test = absolute_audio(read(data / "test.jsonl"), data)
    truth.update({r["id"]: r["label"] for r in test if r.get("label")})  # the test chat's rows carry theirs
    fit, val = split_speakers(train, a.val_fraction, a.seed)
    fit, held_rows, held = hold_out_messages(fit, truth, a.val_messages, a.seed, norm)
    if held:
        print(f"held out of training: {len(held)} messages, {len(held_rows)} recordings", file=sys.stderr)
    val = val + held_rows  # held rows without candidates drop out below: they have nothing to rank
    val = [{**{k: v for k, v in r.items() if k != "label"}, "label": truth[r["id"]]} for r in val
           if r.get("candidates") and r["id"] in truth]
    fit_m, val_m = write(work / "fit.jsonl", fit), write(work / "val.jsonl", val)
    test_m = write(work / "test.jsonl", [{**r, "label": truth[r["id"]]} for r in test])
    truth_m = work / "truth.jsonl"
    write(truth_m, [{"id": k, "label": v} for k, v in truth.items()])
    times: dict = {}
    pre, ft, di = work / "pretrain", work / f"finetune{a.tag}", work / f"distill{a.tag}"
    if not (pre / "encoder.pt").exists():
        sh([plcli, "pretrain", str(fit_m), "--out", str(pre), "--resume", "auto", "--seed", str(a.seed),
            *shlex.split(a.pretrain_args)], times, "pretrain")
    if not (ft / "model.pt").exists():
        sh([plcli, "finetune", str(fit_m), "--pretrained", str(pre), "--out", str(ft), "--truth",
            str(truth_m), "--resume", "auto", "--seed", str(a.seed), *shlex.split(a.finetune_args)], times,
           "finetune")
    if not (di / "model.pt").exists():
        sh([plcli, "distill", str(fit_m), "--teacher", str(ft), "--out", str(di), "--truth", str(truth_m),
            "--ranking-manifest", str(val_m), "--resume", "auto", "--seed", str(a.seed),
            *shlex.split(a.distill_args)], times, "distill")
    ev = work / f"eval{a.tag}.json"
    sh([plcli, "evaluate", str(test_m), "--model", str(di), "--json", str(ev)], times, "evaluate")
    pred_f = work / f"pred{a.tag}.jsonl"
    sh([plcli, "predict", str(test_m), "--model", str(di), "--out", str(pred_f), "--top-k", "1"], times,
       "predict")
    m = json.loads(ev.read_text())
    preds = {p["id"]: p for p in read(pred_f)}

    heard = Counter(norm(truth[r["id"]]) for r in fit if r["id"] in truth)
    messages = sorted({norm(t) for t in truth.values()}, key=lambda k: (heard[k], k))
    rare = set(messages[: len(messages) // 2])  # the rarer half by training count (unheard first)
    rows = [r for r in test if r.get("candidates")]
    y = [norm(truth[r["id"]]) for r in rows]
    p = [norm(preds[r["id"]]["top_k"][0]["label"]) if preds[r["id"]].get("top_k") else "" for r in rows]
    hit = [a_ == b_ for a_, b_ in zip(p, y, strict=True)]
    unseen = [i for i, t in enumerate(y) if heard[t] == 0]
    in_chat = {norm(truth[r["id"]]) for r in train if r["id"] in truth}
    new = [i for i, t in enumerate(y) if t not in in_chat]  # never in the training chat at all
    tail = [i for i, t in enumerate(y) if t in rare]

    def acc(idx):
        return sum(hit[i] for i in idx) / len(idx) if idx else float("nan")

    result = {
        "data": str(data), "seed": a.seed, "tag": a.tag, "distill_args": a.distill_args,
        "train_rows": len(fit), "val_rows": len(val), "test_rows": len(rows),
        "accuracy_all_class": m.get("accuracy"),
        "accuracy_within": acc(range(len(rows))),
        "accuracy_within_classifier": m.get("accuracy_within_candidates_classifier"),
        "accuracy_within_ctc": m.get("accuracy_within_candidates_ctc"),
        "never_heard_rows": len(unseen), "accuracy_within_never_heard": acc(unseen),
        "heard_rows": len(rows) - len(unseen),
        "val_messages": a.val_messages, "held_messages": len(held), "held_rows": len(held_rows),
        "new_in_test_chat_rows": len(new), "accuracy_within_new_in_test_chat": acc(new),
        "accuracy_within_heard": acc([i for i in range(len(rows)) if heard[y[i]] > 0]),
        "tail_rows": len(tail), "tail_accuracy_within": acc(tail),
        "tail_macro_f1": macro_f1([p[i] for i in tail], [y[i] for i in tail], rare),
        "macro_f1_within": macro_f1(p, y, set(y)),
        "closed_set_macro_f1": m.get("macro_f1"),
        "ranking": m.get("ranking"), "decided_by": m.get("decided_by"),
        "clips_per_second": m.get("clips_per_second"), "seconds": times,
    }
    (work / f"result{a.tag}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
