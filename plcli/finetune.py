"""Stage 2: an MLP head on the (frozen) pretrained encoder, trained on exact labels *and* candidate sets.

Three tiers of supervision:
- exact rows: cross-entropy on the label;
- candidate rows, by ``loss``: ``proden`` (targets = the model's own probabilities restricted to
  the candidate set and renormalised, refreshed every epoch; Lv et al. 2020), ``cc`` (negative log
  of the total probability on the candidate set; Feng et al. 2020) or ``ce-only`` (ignore them: the
  textbook SimCLRv2 recipe);
- rows with neither: not used here.

A candidate row whose set seems to miss the truth (a note nobody typed) counts less in the candidate
loss: ``plcli.screening``.

``ctc.weight w`` adds a CTC head (``plcli.models.ctc``) on the frozen encoder's frames, which
scores any text: exact rows train it with plain CTC, candidate rows with the candidate set's
likelihood ``-log sum_{c in S} p_CTC(c|x) / q_c`` (GTC, Moritz et al. 2020; ``q`` the prior
correction, as for the closed-set head), each step on ``ctc_rows`` random rows of the batch. The
frames, like the embeddings, are computed once per clip and cached view.

With the encoder frozen (the default), embeddings are computed once for the clean clip and for the
cached augmented views, and the head trains on them in seconds. ``unfreeze`` trains the whole
network on augmented views with a lower encoder learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from plcli.asr_prior import CHOICES
from plcli.config import (
    Config,
    CTCConfig,
    DataConfig,
    FeatureConfig,
    TrainerConfig,
    min_steps_opt,
    opt,
    outside_weight_opt,
)
from plcli.data.augment import AugmentConfig, SpecAugmentConfig, SpectrogramAugment
from plcli.data.datasets import (
    FeatureRows,
    ViewRows,
    candidate_matrix,
    collate_identity,
    holdout_ids,
    label_vector,
    load_training_rows,
    open_cache,
    truth_vector,
    view_workers,
)
from plcli.data.labels import LabelNormalizer, Vocabulary
from plcli.errors import UserError
from plcli.language import resolve_language, row_texts, voice_of
from plcli.losses import CandidateLoss, SoftTargetCrossEntropy, candidate_log_prior, candidate_targets
from plcli.metrics import restricted_predictions
from plcli.models.classifier import Classifier, save_model
from plcli.models.encoders import ENCODERS
from plcli.pretrain import PretrainConfig, PretrainModule
from plcli.runs import (
    Timer,
    check_run_dir,
    jsonable,
    read_upstream,
    resolve_resume,
    set_threads,
    start_run,
    write_metrics,
)
from plcli.screening import LIKELY
from plcli.training import adamw_cosine, build_trainer, fit, with_min_steps

STAGE = "finetune"
LOSSES = ("proden", "cc", "ce-only")


@dataclass
class FinetuneConfig(Config):
    """``plcli finetune`` options."""

    out: str = opt("", "run directory")
    pretrained: str = opt("", "pretrain run directory, or 'none' for a random-encoder baseline")
    data: DataConfig = opt(factory=DataConfig, help="inputs")
    trainer: TrainerConfig = opt(factory=lambda: TrainerConfig(epochs=40, batch_size=64, lr=2e-3),
                                 help="training")
    min_steps: int = min_steps_opt()
    loss: str = opt("proden", "candidate-row loss: proden, cc or ce-only", choices=LOSSES)
    candidate_weight: float = opt(1.0, "weight of the candidate-row term against the exact-row term", min=0.0)
    outside_weight: float = outside_weight_opt()
    screen: bool = opt(
        True,
        "weigh each candidate row by how likely its candidates hold the truth, judged out of fold",
        why="untyped voice notes: their candidates miss the truth (plcli.screening); docs/finetune-losses.md",
        before=False,
    )
    from_layer: int = opt(
        0, "feed the head from this projection-head layer (0 = encoder output; SimCLRv2 uses 1)", min=0
    )
    head_hidden_dim: int = opt(256, "head hidden width", min=1)
    head_layers: int = opt(2, "head depth (1 = linear)", min=1)
    dropout: float = opt(0.1, "head dropout", min=0.0, max=0.9)
    prior_correction: bool = opt(
        True,
        "divide probabilities by each class's share of candidate slots before restricting to candidates",
        why="frequent messages are frequent distractors",
    )
    label_smoothing: float = opt(0.0, "label smoothing of the exact-row cross-entropy", min=0.0, max=0.5)
    copies: int = opt(
        0,
        "augmented copies per clip as extra head inputs, from the pretrain run's cached views",
        why="0 = the clean clip only, which measured better: docs/benchmark.md, 'Teacher levers'",
        min=0,
    )
    bn_recalibrate: bool = opt(
        True,
        "re-estimate the frozen encoder's BatchNorm statistics on the clean training clips",
        why="pretraining saw only augmented views",
    )
    unfreeze: bool = opt(False, "fine-tune the encoder too (slower; uses augmented views every step)")
    encoder_lr_scale: float = opt(0.1, "encoder learning rate = lr x this, with unfreeze", min=0.0)
    truth: str | None = opt(None, "optional JSONL/CSV of id,label: disambiguation accuracy on candidate rows")
    encoder: str = opt("tcresnet", "encoder for --pretrained none", choices=sorted(ENCODERS))
    ctc: CTCConfig = opt(factory=lambda: CTCConfig(tap=1),
                         help="a CTC head on the frozen encoder's frames (off by default here; the distill "
                              "student has one)")
    ctc_rows: int = opt(64, "rows per batch that get the CTC loss, a random subset", min=1)
    ranking_manifest: str | None = opt(
        None,
        "labelled rows on which the combined ranking is chosen (default: the held-out exact rows)",
        why="speakers held out from training; some saying messages training never holds, to weigh new "
        "messages",
    )
    asr_prior: str = opt(
        "auto",
        "recogniser whose vote on each row's candidates is a prior on the targets (auto: the pretrain run's)",
        why="docs/asr-prior.md",
        choices=CHOICES,
    )
    asr_model: str | None = opt(None,
                                "Whisper model for --recogniser whisper (default: the pretrain run's, else "
                                "'base')")
    asr_window: float | None = opt(None,
                                   "seconds of audio Whisper's encoder sees per clip (default: the upstream "
                                   "run's, else 30)", min=3.0, max=30.0)
    asr_accuracy: float | None = opt(None,
                                     "how often pocketsphinx's vote is right (default: estimated on the "
                                     "exact rows with candidates)", min=0.0, max=1.0)
    asr_workers: int = opt(2, "recogniser processes for the asr prior", min=1)
    features: FeatureConfig = opt(factory=FeatureConfig,
                                  help="log-mel front end (inherited from the pretrain run)")
    augment: AugmentConfig = opt(factory=AugmentConfig,
                                 help="augmentations (inherited from the pretrain run)")
    overwrite: bool = opt(False, "replace an existing run in out")

    def check(self) -> None:
        if not self.data.manifests:
            raise UserError("no training manifest given")
        if not self.pretrained:
            raise UserError("--pretrained is required (a pretrain run directory, or 'none')")
        if self.ctc.tempo or self.ctc.vtlp:
            raise UserError("ctc.tempo and ctc.vtlp perturb the distill student's CTC branch; finetune "
                            "trains its CTC head on cached frames of the frozen encoder and cannot apply "
                            "them")


class FinetuneModule(L.LightningModule):
    """The classifier (encoder + head) with the three-tier loss; in frozen mode only the head trains."""

    def __init__(self, classifier: dict, num_train: int = 0, loss: str = "proden",
                 candidate_weight: float = 1.0, lr: float = 2e-3, weight_decay: float = 1e-4,
                 frozen: bool = True, encoder_lr_scale: float = 0.1, label_smoothing: float = 0.0,
                 spec_augment: dict | None = None, prior_correction: bool = True, ctc_weight: float = 0.0,
                 ctc_rows: int = 64, ctc_prior_correction: bool = True,
                 mel_range: list[float] | None = None, outside: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.model = Classifier(**classifier)
        if frozen:  # only the heads train; DDP also needs every trainable parameter to get a gradient
            head = {id(p) for p in self._heads()}
            for p in self.model.parameters():
                p.requires_grad_(id(p) in head)
        self.spec_aug = SpectrogramAugment(SpecAugmentConfig.from_dict(spec_augment or {}),
                                           mel_range=mel_range)
        self.cc = CandidateLoss(outside=outside)
        self.soft_ce = SoftTargetCrossEntropy()
        # PRODEN's target table (num_train, C): part of the checkpoint so --resume continues it
        self.register_buffer("targets", torch.zeros(num_train, classifier["num_classes"]))
        # log share of candidate slots per class (0 = no correction); set by run() from the data
        self.register_buffer("log_prior", torch.zeros(classifier["num_classes"]))
        # (num_train, C) log-likelihood bonus of the recogniser's vote (plcli.asr_prior); set by run()
        self.register_buffer("asr_bonus", torch.zeros(0), persistent=False)
        # (C, L) token ids and (C,) lengths of every class's text, for the CTC head (set by the stage)
        self.register_buffer("class_tokens", torch.ones(classifier["num_classes"], 1, dtype=torch.long),
                             persistent=False)
        self.register_buffer("class_lengths", torch.zeros(classifier["num_classes"], dtype=torch.long),
                             persistent=False)
        self._val: list[dict] = []

    def _heads(self) -> list:
        params = list(self.model.head.parameters())
        if self.model.has_ctc:
            params += list(self.model.ctc_head.parameters())
        return params

    @property
    def use_ctc(self) -> bool:
        return self.hparams.ctc_weight > 0 and self.model.has_ctc

    def logits(self, batch) -> torch.Tensor:
        if self.hparams.frozen:
            return self.model.head(batch["x"])
        return self.model(self.spec_aug(batch["x"]) if self.training else batch["x"])

    def both(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C) logits and the (B, C', T') frames the CTC head reads."""
        if self.hparams.frozen:
            return self.model.head(batch["x"]), batch["f"].float()
        return self.model.forward_frames(self.spec_aug(batch["x"]) if self.training else batch["x"])

    def ctc_loss(self, frames: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean CTC loss of up to ``ctc_rows`` random rows with a label or candidates (the head runs
        on those rows only): plain CTC on the label, the (prior-corrected) candidate set's
        likelihood otherwise."""
        from plcli.models.ctc import class_candidates, class_ctc_loss

        usable = ((y >= 0) | mask.any(1)).nonzero().squeeze(1)
        sel = usable[torch.randperm(len(usable), device=y.device)[: self.hparams.ctc_rows]]
        if not len(sel):
            return frames.sum() * 0.0 + sum(p.sum() for p in self.model.ctc_head.parameters()) * 0.0
        idx, valid = class_candidates(mask[sel], y[sel])
        prior = self.log_prior if self.hparams.ctc_prior_correction else None
        log_probs = self.model.ctc_head(frames[sel]).float()  # (T', B', V)
        per_row = class_ctc_loss(log_probs, idx, valid, self.class_tokens, self.class_lengths,
                                 log_prior=prior)
        return per_row.mean()

    def on_train_epoch_start(self) -> None:
        # Lightning keeps each module's mode; the stage embeds in eval mode before fitting. Frozen:
        # the encoder stays in eval mode (its BatchNorm statistics are the recalibrated ones).
        if self.hparams.frozen:
            self.model.eval()
            for m in (self.model.head, self.model.ctc_head):
                if m is not None:
                    m.train()
        else:
            self.model.train()

    def training_step(self, batch, batch_idx):
        if self.use_ctc:
            logits, frames = self.both(batch)
        else:
            logits = self.logits(batch)  # (B, C)
        y, mask = batch["y"], batch["mask"]
        exact = y >= 0
        zero = logits.sum() * 0.0
        ce = F.cross_entropy(logits[exact], y[exact],
                             label_smoothing=self.hparams.label_smoothing) if exact.any() else zero
        cand = (~exact) & mask.any(1)
        if self.hparams.loss == "ce-only" or not cand.any():
            pl = zero
        elif self.hparams.loss == "cc":
            pl = self.cc(logits[cand], mask[cand])
        else:
            if not self.hparams.frozen:  # per-batch refresh when features change every step
                with torch.no_grad():
                    i = batch["i"][cand]
                    self.targets[i] = self.disambiguate(logits[cand].detach().float(), mask[cand], i)
            pl = self.soft_ce(logits[cand], self.targets[batch["i"][cand]].to(logits.dtype), batch["w"][cand])
        loss = ce + self.hparams.candidate_weight * pl
        logs = {"train/ce": ce, "train/partial": pl}
        if self.use_ctc:
            logs["train/ctc"] = ctc = self.ctc_loss(frames, y, mask)
            loss = loss + self.hparams.ctc_weight * ctc
        bs = logits.shape[0]
        self.log_dict({"train/loss": loss, **logs}, on_step=False, on_epoch=True, batch_size=bs,
                      prog_bar=False)
        return loss

    def disambiguate(self, logits: torch.Tensor, mask: torch.Tensor,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
        """Candidate-restricted targets. With the prior correction, p(j|x) / pi_j is restricted instead of
        p(j|x): if distractors are drawn in proportion to popularity pi, the chance of the rest of the
        set given label j scales with 1 / pi_j, which cancels the frequent classes' head start. With an
        asr prior, the vote's likelihood multiplies in (``rows``: the training rows of ``logits``;
        None = all)."""
        logits = logits - self.log_prior
        if self.asr_bonus.numel():
            logits = logits + (self.asr_bonus if rows is None else self.asr_bonus[rows])
        return candidate_targets(logits, mask, outside=self.hparams.outside)

    def validation_step(self, batch, batch_idx):
        item = {"y": batch["y"], "mask": batch["mask"], "truth": batch["truth"]}
        if self.use_ctc:
            logits, frames = self.both(batch)
            item["ctc_pick"] = self._ctc_pick(self.model.ctc_head(frames).float(), batch["mask"])
        else:
            logits = self.logits(batch)
        item["logits"] = logits.float()
        self._val.append(item)

    def _ctc_pick(self, log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) the candidate class with the best per-token CTC likelihood (-1 without candidates)."""
        from plcli.losses import candidate_ctc_nll
        from plcli.models.ctc import class_candidates

        idx, valid = class_candidates(mask)
        tg, tl = self.class_tokens[idx], self.class_lengths[idx]
        T, B = log_probs.shape[:2]
        nll = candidate_ctc_nll(log_probs, torch.full((B,), T, dtype=torch.long, device=mask.device), tg, tl,
                                valid & (tl > 0))
        best = (nll / tl.clamp_min(1)).argmin(1)
        return torch.where(mask.any(1), idx.gather(1, best[:, None]).squeeze(1), torch.full_like(best, -1))

    def on_validation_epoch_end(self):
        if not self._val:
            return
        cat = {k: torch.cat([b[k] for b in self._val]) for k in self._val[0]}
        self._val.clear()
        if self.trainer.world_size > 1:  # every rank scores the whole validation set
            cat = {k: self.all_gather(v).flatten(0, 1) for k, v in cat.items()}
        metrics = classifier_metrics(cat["logits"], cat["y"], cat["mask"], cat["truth"])
        if "ctc_pick" in cat:
            metrics.update(ctc_metrics(cat["ctc_pick"], cat["y"], cat["mask"], cat["truth"]))
        self.log_dict(metrics, prog_bar=True)

    def configure_optimizers(self):
        hp = self.hparams
        head = self._heads()
        groups = [(head, hp.lr)]
        if not hp.frozen:
            head_ids = {id(p) for p in head}
            groups.append(([p for p in self.model.parameters() if id(p) not in head_ids],
                           hp.lr * hp.encoder_lr_scale))
        return adamw_cosine(groups, hp.weight_decay, self.trainer.estimated_stepping_batches)


def classifier_metrics(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                       truth: torch.Tensor) -> dict:
    """Validation figures. ``y`` >= 0 marks held-out exact rows; other rows with candidates give the
    covering rate and, where ``truth`` >= 0, disambiguation accuracy."""
    out = {}
    pred = logits.argmax(1)
    has = mask.any(1)
    within = restricted_predictions(logits, mask)  # used on rows with candidates only
    held = y >= 0
    if held.any():
        out["val/acc"] = (pred[held] == y[held]).float().mean()
        hm = held & has
        if hm.any():
            out["val/acc_within"] = (within[hm] == y[hm]).float().mean()
    cand = (~held) & has
    if cand.any():
        out["val/covering"] = mask[cand].gather(1, pred[cand, None]).float().mean()
        t = cand & (truth >= 0)
        if t.any():
            out["val/disambiguation"] = (within[t] == truth[t]).float().mean()
    return out


def ctc_metrics(pick: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, truth: torch.Tensor) -> dict:
    """Within-candidate accuracy of the CTC head alone (``pick``: its best candidate class) on the
    held-out exact rows, and its disambiguation accuracy on candidate rows with a ``truth``."""
    out = {}
    has = mask.any(1)
    held = (y >= 0) & has
    if held.any():
        out["val/ctc_acc_within"] = (pick[held] == y[held]).float().mean()
    t = (y < 0) & has & (truth >= 0)
    if t.any():
        out["val/ctc_disambiguation"] = (pick[t] == truth[t]).float().mean()
    return out


@torch.no_grad()
def recalibrate_bn(model: Classifier, feats: np.ndarray, batch: int = 256, max_items: int = 8192) -> None:
    """Recompute the BatchNorm running statistics of ``model.embed`` on ``feats`` (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    n = min(len(feats), max_items)
    for i in range(0, n, batch):
        chunk = np.asarray(feats[i:i + batch], dtype=np.float32)
        if len(chunk) > 1:
            model.embed(torch.from_numpy(chunk))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


@torch.no_grad()
def _map_clips(model: Classifier, fn, feats: np.ndarray, batch: int) -> torch.Tensor:
    """``fn`` over (N, F, T) or (N, V, F, T) features in batches of clips, in eval mode; the result
    keeps the leading (N,) or (N, V) dimensions."""
    model.eval()
    lead = feats.shape[:-2]
    flat = feats.reshape(-1, *feats.shape[-2:])
    out = torch.cat([fn(torch.from_numpy(np.asarray(flat[i:i + batch], dtype=np.float32)))
                     for i in range(0, flat.shape[0], batch)])
    return out.reshape(*lead, *out.shape[1:])


def embed_all(model: Classifier, feats: np.ndarray, batch: int = 512) -> torch.Tensor:
    """(N, F, T) or (N, V, F, T) features -> (N, D) or (N, V, D) embeddings, in eval mode."""
    return _map_clips(model, model.embed, feats, batch)


def frames_all(model: Classifier, feats: np.ndarray, batch: int = 512) -> torch.Tensor:
    """(N, F, T) or (N, V, F, T) features -> (N, C, T') or (N, V, C, T') float16 encoder frames at the
    CTC head's tap, in eval mode (half precision: they are the largest tensors the stage keeps)."""
    from plcli.models.ctc import encoder_frames

    return _map_clips(model, lambda x: encoder_frames(model.encoder, x, model.tap).half(), feats, batch)


class EmbeddingCopies(FeatureRows):
    """Each item: one random copy (clean or augmented) of a row's cached embedding."""

    def __getitems__(self, idx):
        idx = np.asarray(idx)
        rows = torch.as_tensor(self.index[idx])
        copy = torch.randint(0, self.feats.shape[1], (len(idx),))
        t = torch.as_tensor(idx)
        out = {"x": self.feats[rows, copy], "i": t}
        if self.frames is not None:
            out["f"] = self.frames[rows, copy]
        for k, v in self.fields.items():
            out[k] = v[t]
        return out

    def __init__(self, feats, index=None, frames: torch.Tensor | None = None, **fields):
        super().__init__(feats, index=index, **fields)
        self.frames = frames  # (N, copies, C, T') encoder frames for the CTC head, or None


@dataclass
class _Inputs:
    """Everything ``run`` needs, checked before the run directory is written."""

    rows: list
    vocab: Vocabulary
    mask: torch.Tensor  # (N, C) bool candidate sets
    y: torch.Tensor  # (N,) exact label, -1 none
    truth: torch.Tensor  # (N,) true label from --truth, -1 none or unknown
    held: set  # ids of the held-out exact rows
    train_idx: np.ndarray  # rows that train the head
    classifier: dict  # Classifier arguments
    pretrained: PretrainModule | None
    pre: PretrainConfig | None  # the pretrain run's resolved config
    asr_bonus: np.ndarray | None = None  # (N, C) the recogniser's vote (plcli.asr_prior), set by run()


def _inherit(cfg: FinetuneConfig) -> PretrainConfig | None:
    """Take features/augment from the pretrain run so the caches are reused."""
    if cfg.pretrained.lower() == "none":
        return None
    upstream = read_upstream(cfg.pretrained, "--pretrained", ("pretrain",))
    pre = upstream.as_config(PretrainConfig)
    # a run from before the option existed normalised each clip as a whole
    pre.input_norm = upstream.get("input_norm", "utterance")
    cfg.features, cfg.augment = pre.features, pre.augment
    return pre


def _prepare(cfg: FinetuneConfig, log) -> _Inputs:
    """Read and check every input (manifests, the pretrain run, --truth); writes nothing."""
    pre = _inherit(cfg)
    if cfg.asr_prior == "auto" and pre is not None:  # the pretrain run's recogniser
        cfg.asr_prior = pre.asr_prior
    cfg.asr_model = cfg.asr_model or (pre.asr_model if pre is not None else "base")
    cfg.asr_window = cfg.asr_window or (pre.asr_window if pre is not None else 30.0)
    rows = [r for r in load_training_rows(cfg.data, Path(cfg.out), log=log).rows if r.tier != "unlabelled"]
    if not rows:
        raise UserError("no row has a label or candidates: nothing to fine-tune on")
    cfg.data.language = resolve_language(cfg.data.language, row_texts(rows), log)
    vocab = Vocabulary.from_rows(rows, LabelNormalizer(cfg.data.labels))
    check_run_dir(cfg.out, STAGE, cfg.trainer.resume, cfg.overwrite, vocab)
    y = torch.from_numpy(label_vector(rows, vocab))
    truth = torch.full_like(y, -1)
    if cfg.truth:
        from plcli.data.manifest import read_truth

        truth = torch.from_numpy(truth_vector(rows, read_truth(cfg.truth), vocab)).clamp_min(-1)
    held = holdout_ids([r.id for r in rows if r.tier == "exact"], cfg.data.val_fraction, cfg.trainer.seed)
    train_idx = np.flatnonzero([r.id not in held for r in rows])
    if cfg.loss == "ce-only":
        train_idx = train_idx[(y[train_idx] >= 0).numpy()]
        if len(train_idx) == 0:
            raise UserError("loss ce-only needs exact labels, and the training rows have none")
    classifier = _classifier_args(cfg, pre, len(vocab))
    if cfg.ctc.enabled:
        if classifier["encoder"] not in ("tcresnet", "tcresnet-small", "tcresnet-wide"):
            raise UserError(f"ctc.weight needs a TC-ResNet encoder (frames over time), not "
                            f"{classifier['encoder']}")
        from plcli.text import build_tokenizer

        tok = build_tokenizer(cfg.ctc.tokens, vocab.display, voice=voice_of(cfg.data.language, vocab.display))
        if tok.size < 2:
            log(f"CTC head off: the {len(vocab)} message texts have no {cfg.ctc.tokens} token "
                f"(language {cfg.data.language}); training without it")
            cfg.ctc.weight = 0.0
        else:
            classifier["ctc"] = cfg.ctc.head_args(tok)
    pretrained = None
    if pre is not None:
        from plcli.pretrain import load_pretrained

        pretrained = load_pretrained(cfg.pretrained)
    mask = torch.from_numpy(candidate_matrix(rows, vocab))
    return _Inputs(rows, vocab, mask, y, truth, held, train_idx, classifier, pretrained, pre)


def _classifier_args(cfg: FinetuneConfig, pre: PretrainConfig | None, num_classes: int) -> dict:
    """``Classifier`` arguments: the pretrain run's encoder and projection head, this stage's head."""
    arch = pre or PretrainConfig(encoder=cfg.encoder)
    if cfg.from_layer > arch.proj_layers:
        raise UserError(
            f"from_layer={cfg.from_layer} exceeds the projection head's {arch.proj_layers} layers"
        )
    return dict(encoder=arch.encoder, n_mels=cfg.features.n_mels, num_classes=num_classes,
                from_layer=cfg.from_layer, proj_hidden_dim=arch.proj_hidden_dim, proj_dim=arch.proj_dim,
                proj_layers=arch.proj_layers, head_hidden_dim=cfg.head_hidden_dim,
                head_layers=cfg.head_layers, dropout=cfg.dropout, input_norm=arch.input_norm)


def _module(cfg: FinetuneConfig, inp: _Inputs) -> FinetuneModule:
    """The module with the pretrained weights, the candidate prior and PRODEN's uniform start."""
    n, c = len(inp.rows), len(inp.vocab)
    module = FinetuneModule(inp.classifier, num_train=n, loss=cfg.loss, candidate_weight=cfg.candidate_weight,
                            lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay, frozen=not cfg.unfreeze,
                            encoder_lr_scale=cfg.encoder_lr_scale, label_smoothing=cfg.label_smoothing,
                            spec_augment=cfg.augment.spec.to_dict(), prior_correction=cfg.prior_correction,
                            ctc_weight=cfg.ctc.weight, ctc_rows=cfg.ctc_rows,
                            ctc_prior_correction=cfg.ctc.prior_correction,
                            mel_range=[cfg.features.f_min, cfg.features.f_max], outside=cfg.outside_weight)
    if cfg.prior_correction or cfg.ctc.prior_correction:
        module.log_prior.copy_(candidate_log_prior(inp.mask))
    if module.model.has_ctc:
        from plcli.models.ctc import text_targets

        module.class_tokens, module.class_lengths = text_targets(module.model.tokenizer, inp.vocab.display)
    if inp.pretrained is not None:
        module.model.encoder.load_state_dict(inp.pretrained.encoder.state_dict())
        if module.model.projector is not None:
            module.model.projector.load_state_dict(inp.pretrained.projector.state_dict())
    if inp.asr_bonus is not None:
        module.asr_bonus = torch.from_numpy(inp.asr_bonus)
    # PRODEN starts uniform over the candidates, or from the recogniser's vote
    module.targets.copy_(
        candidate_targets(module.asr_bonus if inp.asr_bonus is not None else torch.zeros(n, c), inp.mask)
    )
    return module


def _datasets(cfg: FinetuneConfig, inp: _Inputs, module: FinetuneModule, cache):
    """(train, validation) datasets, the clean embeddings (None with unfreeze) and the clean
    features of every row.

    Frozen: embeddings of the clean clip and ``copies`` cached views; else the cached views themselves.
    """
    paths = [r.audio for r in inp.rows]
    keys, clean = cache.features(paths)
    views = None
    if cfg.copies > 0 or cfg.unfreeze:
        n_views = inp.pre.views if inp.pre else max(cfg.copies, 2)
        seed = inp.pre.trainer.seed if inp.pre else cfg.trainer.seed
        _, views = cache.views(paths, cfg.augment.waveform_params(), n_views, seed, keys=keys,
                               workers=view_workers(len(paths) * n_views, cfg.trainer.num_workers))
    is_held = torch.tensor([r.id in inp.held for r in inp.rows])
    y_train = torch.where(is_held, torch.full_like(inp.y, -1), inp.y)[inp.train_idx]
    fields_train = {"y": y_train, "mask": inp.mask[inp.train_idx]}
    fields_val = {"y": torch.where(is_held, inp.y, torch.full_like(inp.y, -1)), "mask": inp.mask,
                  "truth": inp.truth}
    val_idx = np.arange(len(inp.rows))  # held-out exact rows + candidate rows (covering rate)
    e_clean = None
    if module.hparams.frozen:
        if cfg.bn_recalibrate:  # deterministic, so a resumed run embeds exactly as the first did
            recalibrate_bn(module.model, clean)
        e_clean = embed_all(module.model, clean)  # (N, D)
        copies = [e_clean[:, None]]
        if views is not None and cfg.copies > 0:
            copies.append(embed_all(module.model, views[:, : cfg.copies]))  # (N, V, D)
        emb = torch.cat(copies, dim=1)  # (N, 1+V, D)
        frames = f_clean = None
        if module.use_ctc:
            f_clean = frames_all(module.model, clean)[:, None]  # (N, 1, C, T')
            f = [f_clean]
            if views is not None and cfg.copies > 0:
                f.append(frames_all(module.model, views[:, : cfg.copies]))  # (N, V, C, T')
            frames = torch.cat(f, dim=1)
        train_ds = EmbeddingCopies(emb, index=inp.train_idx, frames=frames, **fields_train)
        val_ds = EmbeddingCopies(e_clean[:, None], index=val_idx, frames=f_clean, **fields_val)
    else:
        train_ds = ViewRows(views, index=inp.train_idx, **fields_train)
        val_ds = FeatureRows(clean, index=val_idx, **fields_val)
    train_ds.fields["i"] = torch.as_tensor(inp.train_idx)  # training rows index the full target table
    return train_ds, val_ds, e_clean, clean


def run(cfg: FinetuneConfig, log=print) -> dict:
    """Fine-tune a classifier as ``cfg`` says; returns the final metrics (also in RUN_DIR/metrics.json)."""
    timer = Timer()
    set_threads()
    inp = _prepare(cfg, log)
    out = start_run(cfg.out, cfg, STAGE, cfg.trainer.resume, cfg.overwrite, inp.vocab, log)
    L.seed_everything(cfg.trainer.seed, workers=True)
    from plcli.asr_prior import prior_for, resolve
    from plcli.config import cache_dir

    inp.asr_bonus, asr_info = prior_for(inp.rows, inp.vocab, resolve(cfg.asr_prior),
                                        cache_dir(cfg.data.cache_dir), cfg.asr_accuracy, cfg.asr_workers, log,
                                        model=cfg.asr_model, language=cfg.data.language,
                                        window=cfg.asr_window)
    module = _module(cfg, inp)
    ckpt = resolve_resume(out, cfg.trainer.resume)
    cache = open_cache(cfg.data, cfg.features)
    t_feat = Timer()
    train_ds, val_ds, e_clean, clean = _datasets(cfg, inp, module, cache)
    feature_seconds = t_feat.seconds
    untyped = _screen(cfg, inp, e_clean, out, log)  # (N,) out-of-fold none_of_these, 0 unscored
    train_ds.fields["w"] = torch.from_numpy(1.0 - untyped[inp.train_idx]).float()
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)  # as if no fold head had trained
    bs = min(cfg.trainer.batch_size, len(train_ds))
    train_loader = DataLoader(train_ds, batch_size=bs, shuffle=True, collate_fn=collate_identity,
                              num_workers=0 if module.hparams.frozen else cfg.trainer.num_workers)
    val_loader = DataLoader(val_ds, batch_size=1024, shuffle=False, collate_fn=collate_identity)
    monitor = "val/acc" if inp.held else "val/covering"
    extra = [_ProdenEpochRefresh(e_clean, inp.mask)] if cfg.loss == "proden" else []
    trainer = build_trainer(with_min_steps(cfg.trainer, cfg.min_steps, len(train_loader), log), out,
                            monitor=monitor, mode="max", extra_callbacks=extra)
    fit(trainer, module, train_loader, val_loader, ckpt, out)

    metrics = {k.replace("val/", ""): v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    result = {
        "stage": STAGE,
        "loss": cfg.loss,
        "rows": len(inp.rows),
        "exact_rows": int((inp.y >= 0).sum()),
        "held_out_exact": len(inp.held),
        "classes": len(inp.vocab),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        **metrics,
        "feature_seconds": feature_seconds,
        "likely_untyped": int((untyped > LIKELY).sum()),
        **({"asr_prior": asr_info} if asr_info["kind"] != "none" else {}),
        "total_seconds": timer.seconds,
        "cache": {"computed": cache.computed, "reused": cache.reused},
    }
    if module.model.has_ctc:
        result["ranking"] = _tune_ranking(cfg, inp, module.model, clean, log)
    if trainer.is_global_zero:
        ranking = {k: v for k, v in result.get("ranking", {}).items() if k != "grid"}
        save_model(out / "model.pt", module.model, inp.vocab, cfg.features, STAGE,
                   extra={"pretrained": cfg.pretrained, "loss": cfg.loss,
                          **({"ranking": ranking} if ranking else {})})
        return write_metrics(out, result)
    return jsonable(result)


def _screen(cfg: FinetuneConfig, inp: _Inputs, emb: torch.Tensor | None, out: Path, log) -> np.ndarray:
    """(N,) each candidate row's ``none_of_these`` under a head trained on the other folds
    (``plcli.screening``); 0 for the other rows, and for all with the screen off. A resumed run
    reads its first start's scores back."""
    from plcli.metrics import none_of_these
    from plcli.screening import FOLDS, SCREEN_FILE, fold_of, read_scores, write_scores

    ids = [r.id for r in inp.rows]
    if cfg.trainer.resume and (out / SCREEN_FILE).is_file():
        return read_scores(out, ids)
    untyped = np.zeros(len(inp.rows))
    tr = torch.as_tensor(inp.train_idx)
    cand = inp.train_idx[((inp.y[tr] < 0) & inp.mask[tr].any(1)).numpy()]
    if not cfg.screen or emb is None or cfg.loss == "ce-only" or len(cand) < 2 * FOLDS:
        return untyped
    for k, fold in enumerate(fold_of(len(cand), cfg.trainer.seed)[None] == np.arange(FOLDS)[:, None]):
        head = _fold_head(cfg, inp, emb, np.setdiff1d(inp.train_idx, cand[fold]), seed=cfg.trainer.seed + k)
        with torch.no_grad():
            probs = torch.softmax(head(emb[cand[fold]]).float(), dim=1).numpy()
        untyped[cand[fold]] = none_of_these(probs, inp.mask[cand[fold]].numpy())
    write_scores(out, [ids[i] for i in cand], untyped[cand])
    log(f"{int((untyped > LIKELY).sum())} of {len(cand)} candidate rows seem untyped (their candidates miss "
        f"their message, out of fold): each counts 1 - that belief in the candidate loss")
    return untyped


def _fold_head(cfg: FinetuneConfig, inp: _Inputs, emb: torch.Tensor, rows: np.ndarray, seed: int):
    """The head as ``run`` trains it, on the clean embeddings ``emb`` (N, D) of ``rows`` only."""
    L.seed_everything(seed, workers=True, verbose=False)
    module = _module(cfg, inp)
    module.hparams.ctc_weight = 0.0  # the screen reads the classification head only
    ds = EmbeddingCopies(emb[:, None], index=rows, y=inp.y[rows], mask=inp.mask[rows],
                         w=torch.ones(len(rows)))
    ds.fields["i"] = torch.as_tensor(rows)
    loader = DataLoader(ds, batch_size=min(cfg.trainer.batch_size, len(rows)), shuffle=True,
                        collate_fn=collate_identity)
    tc = with_min_steps(cfg.trainer, cfg.min_steps, len(loader), log=lambda *_: None)
    callbacks = [_ProdenEpochRefresh(emb, inp.mask)] if cfg.loss == "proden" else []
    trainer = L.Trainer(max_epochs=tc.epochs, accelerator=tc.accelerator, devices=1, precision=tc.precision,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks)
    trainer.fit(module, loader)
    return module.model.head.cpu().eval()


def _tune_ranking(cfg: FinetuneConfig, inp: _Inputs, model, clean, log) -> dict:
    """The CTC ranking's settings, tuned on the held-out exact rows (``plcli.ranking.tune_ranking``)."""
    from plcli.arrays import RowView
    from plcli.ranking import tune_ranking

    held_idx = np.array([i for i, r in enumerate(inp.rows) if r.id in inp.held], dtype=np.int64)
    return tune_ranking(model.cpu().eval(), inp.vocab, cfg.features, [inp.rows[i] for i in held_idx],
                        RowView(clean, held_idx), cfg.ranking_manifest, cfg.data, log)


class _ProdenEpochRefresh(L.Callback):
    """Frozen encoder: after each epoch, targets <- model probabilities restricted to candidates."""

    def __init__(self, emb: torch.Tensor | None, mask: torch.Tensor):
        self.emb, self.mask = emb, mask

    @torch.no_grad()
    def on_train_epoch_end(self, trainer, module) -> None:
        if self.emb is None:
            return
        was = module.training
        module.eval()
        logits = torch.cat([module.model.head(self.emb[i:i + 4096].to(module.device))
                            for i in range(0, len(self.emb), 4096)])
        module.targets.copy_(module.disambiguate(logits.float(), self.mask.to(module.device), None))
        module.train(was)
