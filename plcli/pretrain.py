"""Stage 1: SimCLR(v2) contrastive pretraining of the audio encoder on all the audio.

Data path (CPU first): each clip's ``views`` augmented copies (audiomentations on the waveform,
then log-mel) are computed once into the feature cache; every step draws two different cached
views per clip and applies cheap batched spectrogram augmentations (masking, mixup, resize-crop)
on the fly. The data side of a step is then one memory-mapped read, so end-to-end throughput
is close to the model's own. ``online_augment`` instead augments waveforms in DataLoader
workers every step (for machines with many cores).

Validation is a representation probe on the clean features, every epoch: a leave-one-out kNN over
the exact rows (``probe/knn_acc``), and a candidate-restricted kNN disambiguation of the rows with
candidates that needs no exact labels (``probe/cand_knn_*``, scored against ``--truth`` or the exact
labels), each with its chance level.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from plcli.config import Config, DataConfig, FeatureConfig, TrainerConfig, min_steps_opt, opt
from plcli.data.augment import AugmentConfig, SpecAugmentConfig, SpectrogramAugment
from plcli.data.datasets import (
    FeatureRows,
    ViewPairs,
    candidate_matrix,
    label_vector,
    load_training_rows,
    open_cache,
    truth_vector,
    view_workers,
)
from plcli.data.labels import UNKNOWN, LabelNormalizer, Vocabulary, class_indices
from plcli.errors import UserError
from plcli.language import resolve_language, row_texts, voice_of
from plcli.losses import NTXentLoss
from plcli.metrics import candidate_chance
from plcli.models.encoders import DEFAULT_INPUT_NORM, ENCODERS, INPUT_NORMS, build_encoder
from plcli.models.heads import ProjectionHead
from plcli.recognisers import CHOICES
from plcli.runs import Timer, jsonable, logged_history, resolve_resume, set_threads, start_run, write_metrics
from plcli.training import adamw_cosine, build_trainer, fit, graph_zero, with_min_steps

STAGE = "pretrain"
PROG_BAR = ("probe/knn_acc", "probe/cand_knn_acc")


@dataclass
class PretrainConfig(Config):
    """``plcli pretrain`` options."""

    out: str = opt("", "run directory")
    data: DataConfig = opt(factory=DataConfig, help="inputs")
    features: FeatureConfig = opt(factory=FeatureConfig, help="log-mel front end (inherited by later stages)")
    trainer: TrainerConfig = opt(factory=lambda: TrainerConfig(epochs=30, batch_size=64, lr=2e-3),
                                 help="training")
    min_steps: int = min_steps_opt()
    augment: AugmentConfig = opt(factory=AugmentConfig, help="waveform and spectrogram augmentations")
    encoder: str = opt("tcresnet", "encoder architecture", choices=sorted(ENCODERS))
    input_norm: str = opt(
        DEFAULT_INPUT_NORM,
        "the encoder's input normalisation (cmn: each mel bin's mean over the clip removed)",
        why="cmn then scales by the clip's variance: speaker- and channel-invariant; utterance: the clip's "
        "mean and variance only",
        choices=INPUT_NORMS,
    )
    proj_hidden_dim: int = opt(256, "projection head hidden width", min=8)
    proj_dim: int = opt(128, "projection output size (the NT-Xent space)", min=8)
    proj_layers: int = opt(3, "projection head depth (SimCLRv2 uses 3)", min=1)
    temperature: float = opt(0.2, "NT-Xent temperature", min=1e-3)
    views: int = opt(8, "augmented views per clip pre-computed into the feature cache", min=2)
    speaker_batches: int = opt(
        0,
        "speakers per batch (the manifest's speaker field); 0 = random batches",
        why="each batch holds chunks of this many speakers' clips, so most negatives share the anchor's "
        "voice and the encoder must learn what is said, not who says it (CPC's within-speaker "
        "negatives)",
        min=0,
    )
    pseudo_positives: float = opt(
        0.0,
        "probability that a clip's positive is another clip that probably says the same message",
        why="the same exact label, or the same recogniser vote among the candidates: PiCO-style "
        "pseudo-positives across voices; needs pocketsphinx; 0 = SimCLR's own-clip positives only",
        min=0.0,
        max=1.0,
    )
    transcript_ctc: float = opt(
        3.0,
        "weight of a CTC loss teaching the encoder each clip's pseudo-transcript; 0 = NT-Xent only",
        why="the pseudo-transcript is the exact label, else the speech recogniser's vote among the "
        "candidates, in phonemes, read from the encoder's last-stage frames through a small CTC head "
        "that only pretraining uses; off without pocketsphinx; chosen on validation speakers "
        "(docs/benchmark.md)",
        min=0.0,
        before=0.0,
    )
    asr_prior: str = opt(
        "auto",
        "recogniser naming each clip's pseudo-transcript among its candidates",
        why="auto: pocketsphinx where installed",
        choices=CHOICES,
    )
    asr_model: str = opt(
        "base",
        "Whisper model for --recogniser whisper: a CTranslate2 folder, or a name",
        why="'base': the plcli[whisper] wheels",
    )
    asr_window: float = opt(30.0,
                            "seconds of audio Whisper's encoder sees per clip (its own 30 s; shorter is "
                            "faster, less accurate)", min=3.0, max=30.0)
    online_augment: bool = opt(False,
                               "augment waveforms every step in DataLoader workers instead of caching views")
    probe_k: int = opt(5, "k of the kNN probes (exact rows; candidate-restricted disambiguation)", min=1)
    truth: str | None = opt(
        None,
        "JSONL/CSV of id,label: each epoch, the kNN disambiguation probe's accuracy on candidate rows",
        why="the probe is a kNN restricted to each row's candidates",
    )
    overwrite: bool = opt(False, "replace an existing run in out")

    def check(self) -> None:
        if not self.data.manifests:
            raise UserError("no training manifest given")
        if self.pseudo_positives and self.online_augment:
            raise UserError("pseudo_positives draws from the cached views; it does not work with "
                            "online_augment")


class PretrainModule(L.LightningModule):
    """Encoder + SimCLRv2 projection head trained with NT-Xent; kNN probes (``probe_metrics``) as validation.

    With ``transcript_tokens`` > 0 a CTC head on the encoder's last-stage frames also learns each
    clip's pseudo-transcript (``transcript_targets``, set by the stage), weighted ``transcript_weight``.
    """

    def __init__(self, encoder: str = "tcresnet", n_mels: int = 64, proj_hidden_dim: int = 256,
                 proj_dim: int = 128, proj_layers: int = 3, temperature: float = 0.2, lr: float = 2e-3,
                 weight_decay: float = 1e-4, spec_augment: dict | None = None,
                 feature_config: dict | None = None, probe_k: int = 5,
                 num_classes: int = 0, input_norm: str = "utterance", transcript_tokens: int = 0,
                 transcript_weight: float = 0.0):
        super().__init__()
        self.save_hyperparameters()  # primitives only: checkpoints load with weights_only
        self.encoder = build_encoder(encoder, n_mels, input_norm=input_norm)
        self.projector = ProjectionHead(self.encoder.embed_dim, proj_hidden_dim, proj_dim, proj_layers)
        fc = feature_config or {}
        mel_range = [fc["f_min"], fc["f_max"]] if "f_min" in fc and "f_max" in fc else None
        self.spec_aug = SpectrogramAugment(SpecAugmentConfig.from_dict(spec_augment or {}),
                                           mel_range=mel_range)
        self.criterion = NTXentLoss(temperature)
        self._probe: list[dict[str, torch.Tensor]] = []
        self.transcript_head = None
        if transcript_tokens > 0:
            from plcli.models.ctc import CTCHead, frames_channels

            self.transcript_head = CTCHead(frames_channels(self.encoder, 3), transcript_tokens, hidden=64,
                                           layers=1, kernel_size=5)
        # (N, L) token ids and (N,) lengths of every clip's pseudo-transcript (0: none), set by the stage
        self.register_buffer("transcript_targets", torch.ones(0, 1, dtype=torch.long), persistent=False)
        self.register_buffer("transcript_lengths", torch.zeros(0, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) log-mel -> (B, embed_dim) representation."""
        return self.encoder(x)

    def training_step(self, batch, batch_idx):
        x0, x1, *idx = batch
        z0 = self.projector(self.encoder(self.spec_aug(x0)))
        z1 = self.projector(self.encoder(self.spec_aug(x1)))
        if self.trainer.world_size > 1:
            # negatives from every rank, with gradients, so the loss equals the global-batch loss
            all0 = self.all_gather(z0, sync_grads=True).flatten(0, 1)
            all1 = self.all_gather(z1, sync_grads=True).flatten(0, 1)
            loss = self.criterion(z0, z1, all0, all1, rank=self.global_rank)
        else:
            loss = self.criterion(z0, z1)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x0.shape[0],
                 sync_dist=True)
        if self.transcript_head is not None:
            ctc = self.transcript_loss(x0, idx[0])
            self.log("train/transcript_ctc", ctc, on_step=False, on_epoch=True, batch_size=x0.shape[0],
                     sync_dist=True)
            loss = loss + self.hparams.transcript_weight * ctc
        return loss

    def transcript_loss(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Mean CTC loss of the (B, F, T) views ``x`` of clips ``idx`` (B,) on their pseudo-transcripts.

        It reads the view without the spectrogram augmentations: crops and mixup cut words out of
        the clip or blend in another one, which breaks the alignment with the transcript.
        """
        from plcli.models.ctc import encoder_frames

        lengths = self.transcript_lengths[idx]
        ok = lengths > 0
        zero = graph_zero(self.transcript_head)
        if not bool(ok.any()):
            return zero
        frames = encoder_frames(self.encoder, x[ok], tap=3)  # (B', C, T / 8)
        # twice the frames: room for CTC's blanks between phonemes in a long message
        frames = F.interpolate(frames, scale_factor=2.0, mode="nearest")
        log_probs = self.transcript_head(frames).float()  # (T', B', V)
        T = log_probs.shape[0]
        return F.ctc_loss(log_probs, self.transcript_targets[idx[ok]],
                          torch.full((int(ok.sum()),), T, dtype=torch.long),
                          lengths[ok], reduction="mean", zero_infinity=True)

    def validation_step(self, batch, batch_idx):
        emb = F.normalize(self.encoder(batch["x"]), dim=1)
        self._probe.append({"emb": emb.float(), **{k: batch[k] for k in ("i", "y", "mask", "truth")}})

    def on_validation_epoch_end(self):
        if not self._probe:
            return
        cat = {k: torch.cat([b[k] for b in self._probe]) for k in self._probe[0]}
        self._probe.clear()
        if self.trainer.world_size > 1:
            cat = {k: self.all_gather(v).flatten(0, 1) for k, v in cat.items()}
            # the distributed sampler pads with repeated rows: keep each once, or it is its own neighbour
            keep = unique_rows(cat["i"])
            cat = {k: v[keep] for k, v in cat.items()}
        metrics = probe_metrics(cat["emb"], cat["y"], cat["mask"], cat["truth"], self.hparams.probe_k)
        for key, value in metrics.items():
            self.log(key, value, prog_bar=key in PROG_BAR, sync_dist=False, rank_zero_only=True)

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_cosine([(self.parameters(), hp.lr)], hp.weight_decay,
                            self.trainer.estimated_stepping_batches)


def unique_rows(i: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct value of ``i`` (N,), ordered by value."""
    order = torch.argsort(i, stable=True)
    first = torch.ones_like(order, dtype=torch.bool)
    first[1:] = i[order[1:]] != i[order[:-1]]
    return order[first]


def knn_accuracy(emb: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Leave-one-out kNN accuracy (cosine similarity, similarity-weighted vote) of unit-norm embeddings."""
    n = emb.shape[0]
    if n < 2:
        return float("nan")
    sim = emb @ emb.T
    sim.fill_diagonal_(-float("inf"))
    k = min(k, n - 1)
    top, idx = sim.topk(k, dim=1)
    num_classes = int(y.max()) + 1
    votes = torch.zeros(n, num_classes, dtype=emb.dtype, device=emb.device)
    votes.scatter_add_(1, y[idx], (top + 1).clamp_min(0))  # shift cosine to [0, 2] so weights are >= 0
    return (votes.argmax(1) == y).float().mean().item()


def knn_chance(y: torch.Tensor) -> float:
    """Share of the most common class among the labelled rows (``y`` >= 0): what always guessing it
    scores, the level ``knn_accuracy`` has to beat (never below 1 / classes)."""
    y = y[y >= 0]
    if not len(y):
        return float("nan")
    return (torch.bincount(y).max() / len(y)).item()


def _ballots(mask: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, C) what each row votes for: its exact label if it has one, else its candidate set."""
    one_hot = F.one_hot(y.clamp_min(0), mask.shape[1]).bool()
    return torch.where((y >= 0)[:, None], one_hot, mask).to(dtype)


def _check_sets(mask: torch.Tensor, y: torch.Tensor) -> None:
    if mask.ndim != 2 or mask.dtype != torch.bool or y.shape != mask.shape[:1]:
        raise ValueError(f"need a bool mask (N, C) and y (N,), got {mask.dtype} {tuple(mask.shape)} and "
                         f"{tuple(y.shape)}")
    if len(y) and int(y.max()) >= mask.shape[1]:
        raise ValueError(f"label {int(y.max())} outside the {mask.shape[1]} classes of mask")


@torch.no_grad()
def candidate_knn_predictions(emb: torch.Tensor, mask: torch.Tensor, y: torch.Tensor, k: int,
                              chunk: int = 2048) -> torch.Tensor:
    """Candidate-restricted leave-one-out kNN disambiguation: (N,) predicted class, -1 without candidates.

    Needs no exact labels. Each row's ``k`` nearest other rows (cosine of the unit-norm ``emb``
    (N, D)) vote, weighted by their similarity shifted to [0, 2] as in ``knn_accuracy``, for every
    class in their own candidate set (``mask`` (N, C) bool) or, if exactly labelled (``y`` (N,)
    >= 0; -1 none), for their label only; rows with neither are never neighbours. A row's
    prediction is the most voted class of its own candidate set. Ties are common (neighbours whose
    sets hold both classes, or no neighbour voting for any candidate) and go to the candidate of
    ``candidate_prior_predictions``, then to the lowest index, so a row without evidence from its
    neighbours scores the prior's level rather than an artefact of the class order.
    Similarities are computed ``chunk`` query rows at a time: memory O(chunk * (N + C)).
    """
    _check_sets(mask, y)
    if emb.ndim != 2 or emb.shape[0] != mask.shape[0]:
        raise ValueError(f"need emb (N, D) with the {mask.shape[0]} rows of mask, got {tuple(emb.shape)}")
    if k < 1 or chunk < 1:
        raise ValueError(f"k and chunk must be >= 1, got {k} and {chunk}")
    n, c = mask.shape
    ballots = _ballots(mask, y, emb.dtype)
    total = ballots.sum(0)  # (C,) every row's ballot, for the tie-break
    not_voter = ~ballots.bool().any(1)
    k = min(k, n - 1)
    pred = torch.full((n,), -1, dtype=torch.long, device=emb.device)
    queries = mask.any(1).nonzero().flatten()
    for q in queries.split(chunk):
        sim = (emb[q] @ emb.T).masked_fill_(not_voter, -float("inf"))  # (B, N)
        sim[torch.arange(len(q), device=q.device), q] = -float("inf")  # leave one out
        top, idx = sim.topk(k, dim=1)  # (B, k); fewer voters than k: -inf entries, weight 0
        weight = (top + 1).clamp_min(0)
        votes = torch.zeros(len(q), c, dtype=emb.dtype, device=emb.device)
        for r in range(k):  # k (B, C) gathers rather than one (B, k, C): memory stays O(B * C)
            votes += weight[:, r, None] * ballots[idx[:, r]]
        votes.masked_fill_(~mask[q], -float("inf"))
        tied = votes == votes.max(1, keepdim=True).values  # (B, C), within the candidates
        pred[q] = (total - ballots[q]).masked_fill_(~tied, -float("inf")).argmax(1)
    return pred


@torch.no_grad()
def candidate_prior_predictions(mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same vote with every other row an equal neighbour, i.e. no representation: (N,) the class
    of each row's candidate set that the other rows vote for most (-1 without candidates). Above
    ``candidate_chance`` when some classes are more frequent; the kNN probe should beat it."""
    _check_sets(mask, y)
    ballots = _ballots(mask, y, torch.float64)
    votes = ballots.sum(0, keepdim=True) - ballots  # (N, C) leave one out
    pred = votes.masked_fill_(~mask, -float("inf")).argmax(1)
    return torch.where(mask.any(1), pred, -1)


def probe_metrics(emb: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, truth: torch.Tensor,
                  k: int) -> dict:
    """Pretrain's validation figures from unit-norm embeddings (N, D), exact labels ``y`` (N,; -1 none),
    candidate sets ``mask`` (N, C) and ``truth`` (N,; -1 none or unknown); a figure is left out when
    no row can measure it.

    - ``probe/knn_acc``: leave-one-out kNN over the exact rows; ``probe/knn_chance`` the majority share.
    - ``probe/cand_knn_acc``: ``candidate_knn_predictions`` against ``truth`` on the rows with
      candidates and a truth; ``probe/cand_knn_exact_acc`` against ``y`` on exact rows with candidates.
      Each comes with ``..._chance`` (mean 1 / candidates) and ``..._prior`` (the representation-free
      vote of ``candidate_prior_predictions``).
    """
    out = {}
    exact = y >= 0
    if int(exact.sum()) >= 2:
        out["probe/knn_acc"] = knn_accuracy(emb[exact], y[exact], k)
        out["probe/knn_chance"] = knn_chance(y[exact])
    has = mask.any(1)
    scored = {"probe/cand_knn": (has & (truth >= 0), truth), "probe/cand_knn_exact": (has & exact, y)}
    if any(bool(rows.any()) for rows, _ in scored.values()):
        pred = candidate_knn_predictions(emb, mask, y, k)
        prior = candidate_prior_predictions(mask, y)
        for name, (rows, target) in scored.items():
            if rows.any():
                out[f"{name}_acc"] = (pred[rows] == target[rows]).float().mean().item()
                out[f"{name}_chance"] = candidate_chance(mask[rows])
                out[f"{name}_prior"] = (prior[rows] == target[rows]).float().mean().item()
    return out


def encoder_payload(module: PretrainModule) -> dict:
    """A plain, Lightning-free description of the trained encoder."""
    hp = dict(module.hparams)
    return {
        "format": 1,
        "encoder": hp["encoder"],
        "n_mels": hp["n_mels"],
        "input_norm": hp["input_norm"],
        "embed_dim": module.encoder.embed_dim,
        "features": hp["feature_config"],
        "state_dict": {k: v.detach().cpu() for k, v in module.encoder.state_dict().items()},
    }


def run(cfg: PretrainConfig, log=print) -> dict:
    """Pretrain an encoder as ``cfg`` says; returns the final metrics (also in RUN_DIR/metrics.json).

    The metrics hold the last epoch's ``probe_metrics`` (``probe/x`` as ``probe_x``: kNN accuracy on
    exact rows, candidate kNN disambiguation vs --truth and exact labels, their chance and prior levels).
    """
    from plcli.io import atomic_torch_save

    timer = Timer()
    set_threads()
    rows = load_training_rows(cfg.data, Path(cfg.out), log=log).rows
    cfg.data.language = resolve_language(cfg.data.language, row_texts(rows), log)
    vocab = Vocabulary.from_rows(rows, LabelNormalizer(cfg.data.labels))
    probe = _probe_fields(cfg, rows, vocab)
    out = start_run(cfg.out, cfg, STAGE, cfg.trainer.resume, cfg.overwrite, vocab, log)
    L.seed_everything(cfg.trainer.seed, workers=True)
    cache = open_cache(cfg.data, cfg.features)
    t_feat = Timer()
    use_transcripts = _transcripts_on(cfg, log)
    train_loader, val_loader = _loaders(cfg, rows, vocab, probe, cache, log, with_index=use_transcripts)
    feature_seconds = t_feat.seconds
    transcripts = _transcripts(cfg, rows, log) if use_transcripts else None
    module = _module(cfg, len(vocab), transcripts[0].size if transcripts else 0)
    if transcripts:
        module.transcript_targets, module.transcript_lengths = transcripts[1:]
    exact_rows = int((probe["y"] >= 0).sum())
    monitor = "probe/knn_acc" if val_loader is not None and exact_rows >= 2 else None
    trainer = build_trainer(with_min_steps(cfg.trainer, cfg.min_steps, len(train_loader), log), out,
                            monitor=monitor, mode="max")
    t_fit = Timer()
    fit(trainer, module, train_loader, val_loader, resolve_resume(out, cfg.trainer.resume), out)
    fit_seconds = t_fit.seconds
    if trainer.is_global_zero:
        atomic_torch_save(encoder_payload(module), out / "encoder.pt")
    logged = dict(trainer.callback_metrics)
    n_train = len(train_loader.dataset)
    metrics = {
        "stage": STAGE,
        "rows": len(rows),
        "exact_rows": exact_rows,
        "classes": len(vocab),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "train_loss": logged.get("train/loss_epoch"),
        "probe_knn_acc": logged.get("probe/knn_acc"),
        **{k.replace("/", "_"): v for k, v in logged.items() if k.startswith("probe/")},
        "probe_knn_acc_history": logged_history(out, "probe/knn_acc"),
        "probe_cand_knn_acc_history": logged_history(out, "probe/cand_knn_acc"),
        "probe_cand_knn_rows": int((probe["mask"].any(1) & (probe["truth"] >= 0)).sum()),
        "probe_chance": (1.0 / len(vocab)) if len(vocab) else None,
        **({"train_transcript_ctc": logged.get("train/transcript_ctc"),
            "transcript_rows": int((transcripts[2] > 0).sum())} if transcripts else {}),
        "feature_seconds": feature_seconds,
        "fit_seconds": fit_seconds,
        "total_seconds": timer.seconds,
        "train_views_per_second": 2 * n_train * max(0, trainer.current_epoch) / max(fit_seconds, 1e-9),
        "cache": {"computed": cache.computed, "reused": cache.reused},
    }
    return write_metrics(out, metrics) if trainer.is_global_zero else jsonable(metrics)


def _probe_fields(cfg: PretrainConfig, rows, vocab) -> dict[str, torch.Tensor]:
    """Per-row probe inputs: exact label ``y`` and ``truth`` (N,; -1 none or unknown), candidates
    ``mask`` (N, C)."""
    y = torch.from_numpy(label_vector(rows, vocab))
    truth = torch.full_like(y, -1)
    if cfg.truth:
        from plcli.data.manifest import read_truth

        truth = torch.from_numpy(truth_vector(rows, read_truth(cfg.truth), vocab)).clamp_min(-1)
    return {"y": y, "truth": truth, "mask": torch.from_numpy(candidate_matrix(rows, vocab))}


def _loaders(cfg: PretrainConfig, rows, vocab, probe: dict, cache, log,
             with_index: bool = False) -> tuple[DataLoader, DataLoader | None]:
    """Pairs of views to train on (``with_index``: with the clips' indices, for the transcript CTC);
    the probe rows' clean features (None when no probe can report)."""
    paths = [r.audio for r in rows]
    keys = cache.keys(paths)
    log(f"pretraining on {len(rows)} recordings; caching {cfg.views} augmented views per clip ...")
    if cfg.online_augment:
        from plcli.data.datasets import OnlineViewPairs

        train_ds = OnlineViewPairs([str(p) for p in paths], cfg.augment, cfg.features)
        collate = None
    else:
        _, views = cache.views(paths, cfg.augment.waveform_params(), cfg.views, cfg.trainer.seed,
                               workers=view_workers(len(paths) * cfg.views, cfg.trainer.num_workers),
                               keys=keys)
        groups = _pseudo_groups(cfg, rows, vocab, log) if cfg.pseudo_positives > 0 else None
        train_ds = ViewPairs(views, groups, cfg.pseudo_positives, with_index=with_index)
        collate = ViewPairs.collate_fn
    val_loader = None
    # clean features of every clip: the probes use the labelled ones, later stages reuse them all
    _, clean = cache.features(paths, keys=keys)
    exact, has = probe["y"] >= 0, probe["mask"].any(1)
    if bool((has & ((probe["truth"] >= 0) | exact)).any()):  # the candidate probe can score some row
        keep = exact | has
    else:
        keep = exact if int(exact.sum()) >= 2 else torch.zeros_like(exact)
        log("no candidate row has a truth (--truth) or an exact label: the candidate kNN probe is off")
    if int(exact.sum()) < 2:
        log("fewer than 2 exact labels: the exact-row kNN probe is off")
    if keep.any():
        idx = keep.nonzero().flatten()
        val_ds = FeatureRows(clean, index=idx.numpy(), **{k: v[idx] for k, v in probe.items()})
        val_loader = DataLoader(val_ds, batch_size=512, shuffle=False, collate_fn=FeatureRows.collate_fn)
    bs = min(cfg.trainer.batch_size, len(train_ds))
    sampler = None
    if cfg.speaker_batches:
        from plcli.data.datasets import SpeakerGroupedSampler

        sampler = SpeakerGroupedSampler([r.speaker for r in rows], bs, cfg.speaker_batches, cfg.trainer.seed)
        log(f"batches of {cfg.speaker_batches} speakers' clips ({len(sampler.groups)} speakers, "
            f"{len(sampler.loose)} clips without one)")
    train_loader = DataLoader(
        train_ds, batch_size=bs, shuffle=sampler is None, sampler=sampler, drop_last=len(train_ds) >= 2 * bs,
        collate_fn=collate, num_workers=cfg.trainer.num_workers,
        persistent_workers=cfg.trainer.num_workers > 0,
    )
    return train_loader, val_loader


def _pseudo_texts(cfg: PretrainConfig, rows, log, option: str) -> list[str | None]:
    """What each row probably says: its exact label, else the recogniser's favourite among its
    candidates; None where neither exists. ``option`` names the setting that needs it, for the error."""
    from plcli.asr_prior import resolve
    from plcli.config import cache_dir
    from plcli.recognisers import recognise

    kind = resolve(cfg.asr_prior)
    if kind == "none":
        raise UserError(f"{option} needs a recogniser: pip install 'plcli[asr]' or 'plcli[whisper]'")
    language = resolve_language(cfg.data.language, row_texts(rows))  # run() has settled it; a caller may not
    votes = recognise(rows, kind, cache_dir(cfg.data.cache_dir), cfg.asr_model, language, log=log,
                      window=cfg.asr_window).votes
    if not _better_than_chance(rows, votes, LabelNormalizer(cfg.data.labels), log):
        votes = np.full(len(rows), -1)
    return [r.label if r.label is not None else (r.candidates[v] if v >= 0 else None)
            for r, v in zip(rows, votes, strict=True)]


def _better_than_chance(rows, votes: np.ndarray, normalizer, log) -> bool:
    """Whether the recogniser's choice names the exact rows' labels more often than a random
    candidate would (smoothed as the asr prior does; True without exact rows to tell)."""
    from plcli.asr_prior import smoothed_accuracy, vote_accuracy

    hits, n = vote_accuracy(rows, votes, normalizer)
    exact = [r for r in rows if r.label is not None and r.candidates]
    chance = float(np.mean([1 / len(r.candidates) for r in exact])) if exact else 0.0
    if n and smoothed_accuracy(hits, n) <= chance:
        log(f"the recogniser names the label of {hits} of {n} exact rows, no better than chance "
            f"({chance:.2f}): pseudo-transcripts from the exact labels only")
        return False
    return True


def _pseudo_groups(cfg: PretrainConfig, rows, vocab: Vocabulary, log) -> np.ndarray:
    """(N,) int: the class each row probably says (``_pseudo_texts``); -1 where nothing is known."""
    texts = _pseudo_texts(cfg, rows, log, "pseudo_positives")
    groups = class_indices(texts, vocab, missing=UNKNOWN)
    log(f"pseudo-positives: {int((groups >= 0).sum())} of {len(rows)} clips grouped by exact label or vote "
        f"into {len(np.unique(groups[groups >= 0]))} messages")
    return groups


def _transcripts_on(cfg: PretrainConfig, log) -> bool:
    """Whether the transcript CTC loss can run: a weight, cached views, a TC-ResNet encoder and
    pocketsphinx for the vote; where one is missing it is off, and ``log`` says why."""
    from plcli.asr_prior import resolve

    if cfg.transcript_ctc <= 0:
        return False
    why = (
        "it reads the cached views, and online_augment has none"
        if cfg.online_augment
        else f"it reads a TC-ResNet's frames, and --encoder {cfg.encoder} has none"
        if not cfg.encoder.startswith("tcresnet")
        else "no recogniser (pip install 'plcli[asr]')"
        if resolve(cfg.asr_prior) == "none"
        else None
    )
    if why:
        log(f"transcript CTC off: {why}")
    return why is None


def _transcripts(cfg: PretrainConfig, rows, log):
    """(phoneme tokenizer, (N, L) token ids, (N,) lengths) of every row's pseudo-transcript
    (``_pseudo_texts``; length 0 where there is none), or None where no row has one."""
    from plcli.models.ctc import text_targets
    from plcli.text import build_tokenizer

    texts = _pseudo_texts(cfg, rows, log, "transcript_ctc")
    voice = voice_of(cfg.data.language, row_texts(rows))
    tok = build_tokenizer("phoneme", [t for t in texts if t is not None], voice=voice)
    if tok.size < 2 and any(t is not None for t in texts):
        log(f"transcript CTC off: the pseudo-transcripts have no phoneme in espeak-ng's {voice} voice")
        return None
    targets, lengths = text_targets(tok, [t or "" for t in texts])
    if not bool((lengths > 0).any()):
        log("transcript CTC off: no clip has an exact label or a recogniser's vote to learn from")
        return None
    log(f"transcript CTC: {int((lengths > 0).sum())} of {len(rows)} clips with a pseudo-transcript (exact "
        f"label or vote), {tok.size - 1} phonemes ({voice}), weight {cfg.transcript_ctc}")
    return tok, targets, lengths


def _module(cfg: PretrainConfig, num_classes: int, transcript_tokens: int = 0) -> PretrainModule:
    return PretrainModule(
        encoder=cfg.encoder, n_mels=cfg.features.n_mels, proj_hidden_dim=cfg.proj_hidden_dim,
        proj_dim=cfg.proj_dim, proj_layers=cfg.proj_layers, temperature=cfg.temperature, lr=cfg.trainer.lr,
        weight_decay=cfg.trainer.weight_decay, spec_augment=cfg.augment.spec.to_dict(),
        feature_config=cfg.features.to_dict(), probe_k=cfg.probe_k, num_classes=num_classes,
        input_norm=cfg.input_norm, transcript_tokens=transcript_tokens, transcript_weight=cfg.transcript_ctc,
    )


def load_pretrained(run_dir: str | Path) -> PretrainModule:
    """The pretrain run's module, loaded through Lightning (weights_only) from its last checkpoint."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        raise UserError(f"{run_dir}: no checkpoints/last.ckpt; is it a finished plcli pretrain run?")
    try:
        return PretrainModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    except (RuntimeError, KeyError, TypeError) as e:
        raise UserError(f"{ckpt}: cannot load the pretrained encoder ({e})") from None
