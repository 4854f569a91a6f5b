"""The command line is generated from the config dataclasses (plcli/cli_options.py): every flag sets
its own setting and nothing else, every other setting takes --set, and help texts fit one line."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from plcli.cli import app
from plcli.cli_options import HELP_LIMIT, LazyCommand, base_type, commands, help_texts, settings, show

COMMANDS = [(path, cmd) for path, cmd in commands(app) if isinstance(cmd, LazyCommand)]
IDS = [" ".join(p) for p, _ in COMMANDS]
META = {"config_file", "set_", "help_all", "ctx"}
# settings whose only valid value in that stage is the default: finetune's CTC head trains on cached frames
ONLY_DEFAULT = {("finetune", "ctc.tempo"), ("finetune", "ctc.vtlp")}
WITH = {("distill", "ctc_all_rounds"): ["--set", "ctc_epochs=0"]}  # settings that need another one


def _other(s, text: bool = False):
    """A valid value of setting ``s`` other than its default (as command-line text with ``text``)."""
    tp = base_type(s.type)
    special = {"data.language": "en", "ctc.kernel_size": 11}  # a language espeak-ng knows; odd kernels
    if s.key in special:
        value = special[s.key]
    elif s.choices:
        value = next(c for c in s.choices if c != s.default)
    elif tp is bool:
        value = not s.default
    elif tp in (int, float):  # a step off the default, within the bounds
        d = s.default if s.default is not None else (s.min or 0)
        value = d + 1 if tp is int else (d * 0.9 if d else 0.1)
        if s.max is not None and value > s.max:
            value = d - 1 if tp is int else s.max * 0.9
        if s.min is not None and value < s.min:
            value = s.min
        value = round(value, 4)
    elif typing.get_origin(tp) in (list, tuple):
        value = ["a.jsonl", "b.jsonl"]
    else:
        value = f"v-{s.key}"
    return show(value) if text else value


def _required(cmd) -> list[str]:
    """Arguments for the command's required flags (and extras), and what each should resolve to."""
    args = []
    for s in settings(cmd.spec):
        if s.flag is not None and s.flag.required:
            value = _other(s)
            if s.flag.argument:
                args += value if isinstance(value, list) else [str(value)]
            else:
                args += [s.names[0], str(value)]
    if cmd.spec.name == "demo-data":
        args.append("demo-out")
    return args


@pytest.fixture
def capture(monkeypatch):
    """Run a command without its body: returns a function that invokes it and gives (cfg, extras)."""

    def run(path, cmd, args):
        seen = {}
        cmd.built()  # from the real body's signature, before it is replaced
        monkeypatch.setattr(cmd.spec, "body", lambda cfg, **extras: seen.update(cfg=cfg, extras=extras))
        res = CliRunner().invoke(app, [*path, *args], env={"COLUMNS": "200"})
        assert res.exit_code == 0 and "cfg" in seen, (args, res.output)
        return seen["cfg"], seen["extras"]

    return run


def _get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=IDS)
def test_every_flag_sets_its_setting_and_nothing_else(path, cmd, capture):
    cfg_defaults = dict((s.key, s.default) for s in settings(cmd.spec))
    required = _required(cmd)
    base, _ = capture(path, cmd, required)
    flagged = [s for s in settings(cmd.spec) if s.flag is not None]
    assert flagged
    for s in flagged:
        if s.flag.required:
            assert _get(base, s.key) == _other(s), s.key
            continue
        value = _other(s)
        if base_type(s.type) is bool:
            names = s.names[0].split("/")
            args = [names[0] if value else names[1]]
        elif s.flag.argument:
            args = list(value) if isinstance(value, list) else [str(value)]
        else:
            args = [s.names[0], show(value)]
        cfg, _ = capture(path, cmd, [*required, *args])
        assert _get(cfg, s.key) == value, (s.key, args)
        changed = {k for k in cfg_defaults if _get(cfg, k) != _get(base, k)}
        assert changed == {s.key}, (args, changed)


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=IDS)
def test_every_parameter_is_a_flag_an_extra_or_a_settings_option(path, cmd):
    real = cmd.built()
    extras = set(list(inspect.signature(cmd.spec.body).parameters)[1:])
    for param in real.params:
        known = param.name in real.setting_keys or param.name in extras or param.name in META
        assert known, (path, param.name)
    keys = list(real.setting_keys.values())
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "distill"])
def test_set_reaches_every_setting_without_a_flag(stage, capture):
    path, cmd = next((p, c) for p, c in COMMANDS if p == (stage,))
    required = _required(cmd)
    rest = [s for s in settings(cmd.spec) if s.flag is None]
    assert len(rest) > 50
    for s in rest:
        if (stage, s.key) in ONLY_DEFAULT:
            res = CliRunner().invoke(app, [*path, *required, "--set", f"{s.key}={_other(s, text=True)}"])
            assert res.exit_code == 2 and s.key in res.stderr, res.output
            continue
        extra = WITH.get((stage, s.key), [])
        cfg, _ = capture(path, cmd, [*required, *extra, "--set", f"{s.key}={_other(s, text=True)}"])
        assert _get(cfg, s.key) == _other(s), s.key


def test_set_types_and_checks_values(capture):
    path, cmd = next((p, c) for p, c in COMMANDS if p == ("distill",))
    req = ["m.jsonl", "--teacher", "t", "--out", "o"]
    cfg, _ = capture(path, cmd, [*req, "--set", "warm_start=false", "--set", "ctc.tempo=0", "--set",
                                 "asr_rounds=null", "--set", "data.manifests=[a.jsonl, b.jsonl]",
                                 "--set", "trainer.lr=0.01", "--set", "trainer.lr=0.02"])
    assert cfg.warm_start is False and cfg.ctc.tempo == 0.0 and cfg.asr_rounds is None
    assert cfg.data.manifests == ["a.jsonl", "b.jsonl"] and cfg.trainer.lr == 0.02
    for bad, message in (("trainer.epoch=3",
                          "unknown config key trainer.epoch; did you mean trainer.epochs?"),
                         ("ctc_refit=1", "did you mean ctc_refits?"),
                         ("student=tcresnet-smal", "is not one of auto,"),
                         ("cc_weight=2", "cc_weight=2.0 must be <= 1.0"),
                         ("rounds=two", "rounds: expected int, got 'two'"),
                         ("ctc=1", "it is a section"),
                         ("rounds", "--set: expected KEY=VALUE, got 'rounds'")):
        res = CliRunner().invoke(app, ["distill", *req, "--set", bad])
        assert res.exit_code == 2 and message in res.stderr, (bad, res.output)


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=IDS)
def test_help_all_lists_every_setting(path, cmd):
    res = CliRunner().invoke(app, [*path, "--help-all"], env={"COLUMNS": "250"})
    if all(s.flag is not None for s in settings(cmd.spec)):  # then there is no --set either
        assert res.exit_code == 2 and "No such option: --help-all" in res.output, res.output
        return
    assert res.exit_code == 0, res.output
    listed = {line.split("│")[1].strip() for line in res.output.splitlines() if line.count("│") > 2}
    assert {s.key for s in settings(cmd.spec)} <= listed


def test_a_flag_without_a_setting_is_rejected():
    """finetune used to accept --ctc-refits and --ctc-refit-epochs and pass them nowhere."""
    for extra in (["--ctc-refits", "2"], ["--ctc-refit-epochs", "3"]):
        res = CliRunner().invoke(app, ["finetune", "m.jsonl", "--pretrained", "none", "--out", "o", *extra])
        assert res.exit_code == 2 and "No such option" in res.output, res.output


def test_help_texts_are_one_line_of_at_most_100_characters():
    long = [(where, len(text)) for where, text in help_texts(app) if "\n" in text or len(text) > HELP_LIMIT]
    assert not long


def test_listing_the_commands_imports_no_stage():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom plcli.cli import app\n"
            "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
            "assert CliRunner().invoke(app, ['predict', '--help']).exit_code == 0\n"
            "print(sorted(m for m in sys.modules if m in ('lightning', 'plcli.pretrain', 'plcli.finetune',"
            " 'plcli.distill', 'plcli.predict')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parents[1])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "['plcli.predict']"


def test_docs_options_md_is_up_to_date():
    from plcli.cli_options import options_markdown

    doc = Path(__file__).parents[1] / "docs" / "options.md"
    assert doc.read_text(encoding="utf-8") == options_markdown(app), "run python scripts/gen_options.py"


def test_config_file_in_json_or_yaml_then_flags_then_set(tmp_path, capture):
    path, cmd = next((p, c) for p, c in COMMANDS if p == ("distill",))
    req = ["m.jsonl", "--teacher", "t", "--out", "o"]
    (tmp_path / "c.json").write_text('{"rounds": 2, "trainer": {"epochs": 7, "lr": 0.01}, '
                                     '"ctc": {"weight": 0.5}}')
    (tmp_path / "c.yaml").write_text("rounds: 2\ntrainer: {epochs: 7, lr: 0.01}\nctc: {weight: 0.5}\n")
    for name in ("c.json", "c.yaml"):
        cfg, _ = capture(path, cmd, [*req, "--config", str(tmp_path / name), "--epochs", "5", "--set",
                                     "trainer.lr=0.02", "--asr-prior", "none"])
        assert (cfg.rounds, cfg.trainer.epochs, cfg.trainer.lr, cfg.ctc.weight) == (2, 5, 0.02, 0.5)
        assert cfg.asr_prior == "none"  # --asr-prior is --recogniser's other name
