"""The ``plcli`` command line: thin commands that resolve their config and call a stage's ``run``.

Each command names the settings of its config dataclass that get a flag; the flags themselves (type,
help, default, choices, bounds) are generated from the fields (``plcli.cli_options``), and every
other setting takes ``--set KEY=VALUE``. Commands are built on first use and heavy imports happen
inside them, so ``plcli --help`` stays fast."""

from __future__ import annotations

from pathlib import Path

import typer

from plcli.cli_options import config_class, config_command, flag
from plcli.console import console, log

app = typer.Typer(
    name="plcli",
    help="Recognise short voice messages from candidate sets: pretrain -> finetune -> distill.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Data preparation: import chat exports.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# -- flags of the training stages (the settings, their help and defaults: the stages' config classes) --
# Each stage has a flag for what a user decides: its inputs, where it writes, how long it trains,
# the language and the recogniser, and the hardware. Every other setting: --set KEY=VALUE.
HW = "Hardware"
STAGE_INPUT = (flag("data.manifests", argument=True, required=True),)
STAGE_COMMON = (
    flag("out", "--out", "-o", required=True),
    flag("trainer.epochs"),
    flag("trainer.batch_size"),
    flag("trainer.seed"),
    flag("data.language"),
    flag("asr_prior", "--recogniser", "--asr-prior"),
    flag("trainer.resume"),
    flag("overwrite"),
    flag("data.skip_invalid"),
    flag("trainer.accelerator", panel=HW),
    flag("trainer.devices", panel=HW),
    flag("trainer.precision", panel=HW),
)


def _stage(name: str, *own):
    """Register a training stage (plcli/stages.py: its module and config class) with its own flags and
    the shared ones."""
    def config():
        from plcli import stages

        return stages.get(name).config_class()

    return config_command(app, name, config, (*STAGE_INPUT, *own, *STAGE_COMMON))


# -- data ---------------------------------------------------------------------------------------
@config_command(app, "validate", config_class("plcli.command_configs", "ValidateConfig"), (
    flag("manifests", argument=True, required=True), flag("skip_invalid"), flag("rejects"),
    flag("json_out", "--json"), flag("no_audio")))
def validate(cfg):
    """Check manifests row by row and print a summary.

    Every problem is listed as FILE:LINE: reason. Exits with code 2 when there are problems,
    unless --skip-invalid is given (then the rejected rows go to --rejects).
    """
    from rich.table import Table

    from plcli.data.validate import validate_manifests, write_rejects
    from plcli.io import atomic_write_json

    manifests = [Path(m) for m in cfg.manifests]
    skip_invalid, rejects, json_out = cfg.skip_invalid, cfg.rejects, cfg.json_out
    report = validate_manifests(manifests, check_audio=not cfg.no_audio)
    s = report.summary()
    t = Table(title="manifest summary", show_header=False)
    for k in ("input_rows", "accepted", "rejected", "exact", "candidate_only", "unlabelled",
              "vocabulary_size", "speakers"):
        t.add_row(k.replace("_", " "), str(s[k]))
    t.add_row("candidate set sizes",
              ", ".join(f"{k}: {v}" for k, v in s["candidate_set_sizes"].items()) or "-")
    d = s["duration_seconds"]
    if d:
        t.add_row("duration (s)",
                  f"min {d['min']:.2f}  median {d['median']:.2f}  mean {d['mean']:.2f}  max {d['max']:.2f}  "
                  f"total {d['total']:.0f}")
    console.print(t)
    for w in report.warnings[:20]:
        log(f"[yellow]warning:[/] {w}")
    if len(report.warnings) > 20:
        log(f"[yellow]... and {len(report.warnings) - 20} more warnings[/]")
    if json_out:
        atomic_write_json(json_out,
                          {**s, "problems": [str(p) for p in report.problems], "warnings": report.warnings})
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


@config_command(data_app, "from-chat", config_class("plcli.command_configs", "ChatImportConfig"), (
    flag("export", argument=True), flag("voices"), flag("messages"), flag("labels"),
    flag("out", "--out", "-o", required=True), flag("k"), flag("window"), flag("same_author"), flag("format"),
    flag("date_order"), flag("media_dir")))
def from_chat(cfg):
    """Build a manifest from a chat export: WhatsApp, Telegram, or two tables (see docs/chat-import.md)."""
    from plcli.data import chat
    from plcli.data.labels import LabelNormalizer
    from plcli.errors import UserError

    def path(value):
        return Path(value) if value is not None else None

    export, voices, messages, labels, out = map(path,
                                                (cfg.export, cfg.voices, cfg.messages, cfg.labels, cfg.out))
    k, window, same_author = cfg.k, cfg.window, cfg.same_author
    if (voices is None) != (messages is None):
        raise UserError("--voices and --messages go together")
    if (export is None) == (voices is None):
        raise UserError("give an EXPORT (WhatsApp or Telegram export, or a tables folder) or --voices and "
                        "--messages")
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
                export, out_path=out, format=cfg.format, date_order=cfg.date_order, labels_path=labels, k=k,
                window_seconds=window, same_author=same_author, key=LabelNormalizer(),
                media_dir=path(cfg.media_dir), progress=lambda i, n: bar.update(task, completed=i, total=n))
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
    authors = summary.get("authors") or {
        s: {"voice_notes": n} for s, n in Counter(r.get("speaker") for r in rows if r.get("speaker")).items()
    }
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


@config_command(app, "demo-data", config_class("plcli.demo", "DemoConfig"), (
    flag("phrases"), flag("vocabulary"), flag("language"), flag("zipf"), flag("new_messages"),
    flag("missing_truth"), flag("train"), flag("test"), flag("exact_fraction"), flag("seed"), flag("workers"),
    flag("engines")))
def demo_data(cfg, out: Path = typer.Argument(..., help="folder to write the demo dataset into",
                                              show_default=False)):
    """Generate a synthetic chat-voice dataset: train.jsonl, test.jsonl, truth.jsonl, audio/, chat/."""
    from rich.progress import Progress

    from plcli.demo import generate_demo

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("synthesising", total=None)
        summary = generate_demo(out, cfg, progress=lambda i, n: bar.update(task, completed=i, total=n))
    console.print_json(data=summary)
    log(f"[green]demo data in {out}[/]: try [bold]plcli validate {out}/train.jsonl[/]")


# -- training stages (plcli/stages.py: name -> module, config class, run) -----------------------------
def _run_stage(name: str, cfg):
    """Hand the resolved config over to the stage's run() and print its final metrics."""
    from plcli import stages

    metrics = stages.get(name).run(cfg, log=log)
    console.print_json(data={k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
    return metrics


@_stage("pretrain", flag("truth"), flag("encoder"))
def pretrain(cfg):
    """Stage 1: SimCLR contrastive pretraining of an audio encoder on all the audio.

    Next to NT-Xent, a CTC loss teaches the encoder each clip's pseudo-transcript (its exact label,
    else the recogniser's choice among its candidates), so that it learns what is said across voices
    (transcript_ctc; off without a recogniser).

    Writes RUN_DIR/config.yaml, checkpoints/last.ckpt (and best), metrics.json, logs/metrics.csv
    and encoder.pt (plain weights). Each epoch, kNN probes report with their chance levels: accuracy
    on exact rows, and a candidate-restricted kNN disambiguation of the candidate rows (against
    --truth, and against the exact labels of exact rows with candidates).
    """
    return _run_stage("pretrain", cfg)


@_stage("finetune", flag("pretrained", required=True), flag("truth"))
def finetune(cfg):
    """Stage 2: MLP head on the frozen encoder, trained on exact labels and candidate sets.

    The run directory holds the teacher: model.pt (encoder + head + vocabulary), vocab.json,
    config.yaml, metrics.json and checkpoints.
    """
    return _run_stage("finetune", cfg)


@_stage("distill", flag("teacher", required=True), flag("truth"), flag("ranking_manifest"), flag("student"),
        flag("rounds"))
def distill(cfg):
    """Stage 3: distil the teacher into a smaller student on candidate-restricted pseudo-labels.

    Writes model.pt, vocab.json (the teacher's), targets.npy, config.yaml, metrics.json (held-out
    accuracy, covering rate, disambiguation accuracy with --truth) and checkpoints.
    """
    return _run_stage("distill", cfg)


@config_command(app, "train", config_class("plcli.train", "TrainConfig"), (
    flag("source", argument=True, required=True), flag("out", "--out", "-o", required=True), flag("labels"),
    flag("resume"), flag("overwrite")))
def train(
    cfg,
    stages_file: Path = typer.Option(None, "--config", help="YAML file: a mapping of options per stage"),
    stage_set: list[str] = typer.Option(None, "--set", help="STAGE.KEY=VALUE, e.g. distill.rounds=3"),
):
    """Pretrain, finetune and distill in one run folder, from a manifest or a chat export."""
    from plcli.train import run

    _print_train_summary(run(cfg, stage_set or [], str(stages_file) if stages_file else None, log=log))


def _print_train_summary(s: dict) -> None:
    from rich.table import Table

    t = Table(title=f"plcli train: {s['out']}")
    for col in ("stage", "seconds", "validation accuracy (within candidates)"):
        t.add_column(col)
    for name, r in s["stages"].items():
        m = r.get("metrics") or {}
        acc = m.get("val_acc_within", m.get("probe/cand_knn_acc"))
        t.add_row(
            name,
            "finished earlier" if r.get("skipped") else f"{r['seconds']:.0f}",
            "-" if acc is None else f"{acc:.3f}",
        )
    console.print(t)
    untyped = ((s["stages"].get("finetune") or {}).get("metrics") or {}).get("likely_untyped")
    if untyped:
        log(f"{untyped} recordings seem untyped (their candidates miss the message): they count less")
    log(f"model: {s['model']}   next: plcli predict EXPORT --model {s['model']} --out voice_notes.csv")


INFERENCE = (flag("manifests", argument=True, required=True), flag("model", required=True))


@config_command(
    app,
    "predict",
    config_class("plcli.predict", "PredictConfig"),
    (
        *INFERENCE,
        flag("out", "--out", "-o", required=True),
        flag("top_k"),
        flag("batch_size"),
        flag("skip_invalid"),
        flag("rejects"),
        flag("cache_dir"),
        flag("fallback"),
        flag("fallback_below"),
        flag("asr_model"),
        flag("asr_window"),
        flag("abstain"),
        flag("abstain_above"),
    ),
)
def predict(cfg):
    """Top-k labels per recording, restricted to its candidates when it has them (JSON Lines)."""
    from plcli.predict import run

    s = run(cfg, log=log)
    log(
        f"wrote {s['rows']} predictions ({s['restricted']} restricted to candidates) to {cfg.out}; "
        f"model {s['clips_per_second']:.0f} clips/s"
    )


@config_command(
    app,
    "evaluate",
    config_class("plcli.evaluate", "EvaluateConfig"),
    (
        *INFERENCE,
        flag("truth"),
        flag("json_out", "--json"),
        flag("report_dir"),
        flag("batch_size"),
        flag("skip_invalid"),
        flag("rejects"),
        flag("cache_dir"),
        flag("bins"),
        flag("fallback"),
        flag("fallback_below"),
        flag("asr_model"),
        flag("asr_window"),
    ),
)
def evaluate(cfg):
    """Accuracy (all classes and within candidates), macro-F1, covering rate, calibration, per-class table."""
    from plcli.evaluate import run

    run(cfg, log=log, console=console)


@config_command(
    app,
    "export",
    config_class("plcli.export", "ExportConfig"),
    (flag("model", required=True), flag("out", "--out", "-o", required=True), flag("format"), flag("opset")),
)
def export(cfg):
    """Waveform-in, probabilities-out model file (feature extraction included) plus FILE.vocab.json."""
    from plcli.export import run

    run(cfg, log=log)


@config_command(
    app,
    "label",
    config_class("plcli.label", "LabelPageConfig"),
    (
        flag("manifests", argument=True, required=True),
        flag("labels", required=True),
        flag("model"),
        flag("port"),
        flag("host"),
        flag("browser"),
        flag("seed"),
        flag("uncertainty"),
        flag("cache_dir"),
    ),
)
def label(cfg):
    """Label recordings in a local web page: play each one, pick its transcript among its candidates.

    Keys 1-9 and 0 pick a candidate, n none of these, s skip, u undo. Every answer is appended to
    --labels at once; stop with Ctrl-C and run again to continue (docs/labelling.md).
    """
    from plcli.label import run

    run(cfg, log=log)


@config_command(
    app,
    "doctor",
    config_class("plcli.command_configs", "DoctorConfig"),
    (flag("cache_dir"), flag("json_out", "--json"), flag("fetch_whisper_base")),
)
def doctor(cfg):
    """Check the installation: versions, a smoke test of each required package, accelerators,
    CPU threads, the feature cache, and the optional speech engines and extras.

    Exits 1 when a required package is missing or broken (the failing line says which).
    """
    import json

    from plcli import doctor as doc
    from plcli.config import cache_dir as resolve_cache

    root = resolve_cache(cfg.cache_dir)
    if cfg.fetch_whisper_base:
        from plcli.errors import UserError
        from plcli.recognisers.whisper import assemble_base

        try:
            log(f"Whisper base is in {assemble_base(root, log)}")
        except UserError as exc:
            log(f"[bold red]{exc}[/]")
            raise typer.Exit(1) from None
    rep = doc.report(root)
    if cfg.json_out:
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
        hw.add_row(
            "Lightning --accelerator auto", escape(a.get("lightning_auto") or a.get("lightning_error", "?"))
        )
    c = rep["cache"]
    size = f"{human_bytes(c['bytes'])} in {c['files']} files" if c["exists"] else "not created yet"
    if c["tmp_files"]:
        size += f", {c['tmp_files']} temporary (removed at the next open when stale)"
    hw.add_row("feature cache", f"{escape(c['path'])}: {size}")
    console.print(hw)
    opt = Table(title="optional", show_header=False)
    for name, n in rep["engines"].items():
        opt.add_row(
            f"speech engine {name}",
            escape(str(n)) if name == "error" else (f"{n} voices" if n else "[dim]not installed[/]"),
        )
    for name, v in rep["extras"].items():
        opt.add_row(f"extra {name}", v or "[dim]not installed[/]")
    for name, ok in rep["tools"].items():
        opt.add_row(f"program {name}", "yes" if ok else "[dim]no[/]")
    for name, state in rep["recognisers"].items():
        opt.add_row(
            f"recogniser {name}", escape(state) if state.startswith("ok") else f"[dim]{escape(state)}[/]"
        )
    console.print(opt)
    if rep["ok"]:
        log("[green]all required pieces work[/]")
    else:
        log(f"[bold red]{escape(rep['failure'])}[/]")


def main() -> None:
    app()
