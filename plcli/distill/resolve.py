"""The ``auto`` settings of a distillation, settled before its steps run: the student and the CTC tokens."""

from __future__ import annotations

from itertools import chain

from plcli.distill.config import DistillConfig
from plcli.distill.inputs import open_teacher, pretrained_dir
from plcli.distill.plan import ctc_phase
from plcli.language import AUTO, espeak_voice, resolve_language, row_texts
from plcli.models.encoders import DEFAULT_INPUT_NORM, ENCODERS

# the default student of a data set large enough to train one from scratch
SMALL_STUDENT = "tcresnet-small"


def student_args(cfg, n_mels: int, num_classes: int, ctc: dict | None = None,
                 input_norm: str = DEFAULT_INPUT_NORM) -> dict:
    """``Classifier`` arguments of the student (``cfg``: a ``DistillConfig`` or the benchmark's
    ``BaselineConfig``, anything with ``student``, ``head_hidden_dim``, ``head_layers``, ``dropout``);
    ``ctc``: the CTC head's settings (``CTCConfig.head_args``), or None for none; ``input_norm``: the
    encoder's (distill passes its teacher's)."""
    args = dict(encoder=cfg.student, n_mels=n_mels, num_classes=num_classes, from_layer=0,
                head_hidden_dim=cfg.head_hidden_dim, head_layers=cfg.head_layers, dropout=cfg.dropout,
                input_norm=input_norm)
    if ctc is not None:
        args["ctc"] = ctc
    return args


def capped_batch(batch_size: int, small_data_batch: int) -> int:
    """The batch size of the small-data student: at most ``small_data_batch`` (0: no cap)."""
    return min(batch_size, small_data_batch) if small_data_batch > 0 else batch_size


def resolve_student(cfg: DistillConfig, log=print) -> None:
    """Settle ``student`` and ``student_init`` when they are ``auto`` (in place, so the run's
    config.yaml records the choice).

    A small training set is where a from-scratch student lacks data and distillation is cheap: there
    the student is the teacher's pretrained encoder, fine-tuned with a new head (SimCLRv2's own
    student). On the learning curve's validation speakers this lifted uniform-message students by
    0.06-0.09 at 600 and 1200 recordings and left Zipf ones level (docs/benchmark.md). That student
    also trains with batches of at most ``small_data_batch`` (64 rather than 256): four times the
    optimiser steps, +0.03 (uniform) and +0.06 (Zipf) at 600 recordings over 3 seeds. A teacher
    without pretraining (``finetune --pretrained none``) has nothing to pass on: its student starts
    from scratch, and below ``small_data`` it takes the same smaller batch (+0.01 to +0.11 on 5 of 5
    validation cells).
    """
    from plcli.data.manifest import read_manifest

    if cfg.student == "auto":
        teacher = open_teacher(cfg.teacher)
        pretrained = pretrained_dir(teacher.run) is not None
        n = sum(len(read_manifest(p)[0]) for p in cfg.data.manifests)
        encoder = teacher.model.kwargs.get("encoder")
        # an explicit student_init teacher asks for the teacher's encoder at any size
        wanted = cfg.student_init == "teacher" or (pretrained and n < cfg.small_data)
        if wanted and encoder in ENCODERS:
            cfg.student = encoder
            cfg.student_init = "teacher" if cfg.student_init == "auto" else cfg.student_init
            log(f"student: the teacher's encoder ({encoder}), {cfg.student_init} start "
                f"({n} training recordings; small_data {cfg.small_data})")
        else:
            cfg.student = SMALL_STUDENT
            why = "the teacher's encoder was not pretrained" if not pretrained else f"{n} training recordings"
            log(f"student: {SMALL_STUDENT} ({why})")
        # few recordings: smaller batches, so that an epoch is more than a couple of steps
        batch = capped_batch(cfg.trainer.batch_size, cfg.small_data_batch)
        if (wanted or n < cfg.small_data) and batch != cfg.trainer.batch_size:
            cfg.trainer.batch_size = batch
            log(f"batch size {batch} per device (small_data_batch; 0 keeps --batch-size)")
    if cfg.student_init == "auto":
        cfg.student_init = "scratch"


def resolve_ctc(cfg: DistillConfig, log=print) -> None:
    """Settle ``data.language`` ("auto": the teacher's, else detected from the training texts) and
    switch off the CTC tokens the teacher's messages have none of (in place, so config.yaml records it)."""
    from plcli.data.manifest import read_manifest
    from plcli.text import build_tokenizer

    teacher = open_teacher(cfg.teacher)
    inherited = teacher.run.get("data.language") if teacher.run is not None else None
    if cfg.data.language == AUTO and inherited not in (None, AUTO):
        cfg.data.language = resolve_language(inherited, ())
        log(f"language: {cfg.data.language} (the teacher's)")
    else:  # the texts are read only when they are needed
        texts = (t for p in cfg.data.manifests for t in row_texts(read_manifest(p)[0]))
        cfg.data.language = resolve_language(cfg.data.language, chain(texts, teacher.vocab.display), log)
    if not cfg.ctc.enabled:
        return
    texts, voice = teacher.vocab.display, espeak_voice(cfg.data.language)
    tokens, other = cfg.ctc.tokens, "phoneme" if cfg.ctc.tokens == "char" else "char"
    n = {k: build_tokenizer(k, texts, voice=voice).size - 1 for k in (tokens, other)}
    if not n[tokens]:
        hint = f"; --set ctc.tokens={other} finds {n[other]}" if n[other] else ""
        log(f"CTC head off: the teacher's {len(texts)} message texts have no {tokens} token "
            f"(language {cfg.data.language}{hint}); training without it")
        cfg.ctc.weight = 0.0
    elif cfg.ctc_other_tokens and ctc_phase(cfg) and not n[other]:
        log(f"no CTC start with {other} tokens: the teacher's message texts have none")
        cfg.ctc_other_tokens = False
