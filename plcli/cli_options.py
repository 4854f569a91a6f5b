"""Command-line options generated from the config dataclasses: one definition per option.

A command declares which settings of its config class get a flag (``flag("trainer.epochs")``); the
flag's type, help, default, choices and bounds come from the field's ``opt(...)``. Every setting
without a flag stays reachable with ``--set KEY=VALUE`` and ``--config FILE`` (YAML or JSON) and is
listed by ``--help-all``. Every flag given on the command line goes to ``load_config`` as a dotted
override, so a flag cannot be accepted and then ignored. A command is built on first use
(``LazyCommand``): ``plcli --help`` imports no stage and ``plcli predict`` no training code, while a
stage's own ``--help`` imports the stage's module, where its config class lives.

``scripts/gen_options.py`` writes docs/options.md from the same declarations (``options_markdown``).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperCommand

HELP_LIMIT = 100  # characters of a one-line help text
SETTINGS_PANEL = "Settings (plcli COMMAND --help-all lists every key)"


@dataclass(frozen=True)
class Flag:
    """A flag (or positional argument) for the setting at dotted ``key``."""

    key: str
    names: tuple[str, ...] = ()
    argument: bool = False
    required: bool = False
    panel: str | None = None


def flag(key: str, *names: str, argument: bool = False, required: bool = False,
         panel: str | None = None) -> Flag:
    """``names`` default to ``--`` and the key's last part with dashes (``trainer.batch_size``:
    ``--batch-size``); a boolean setting that defaults to true gets ``--name/--no-name``."""
    return Flag(key, tuple(names), argument, required, panel)


@dataclass
class Spec:
    """A command built from a config class: ``body(cfg, **extras)`` runs it on the resolved config.

    ``config`` returns the class (importing its module only then). The body's own parameters after
    ``cfg`` are ordinary Typer parameters (``extras``) for the few inputs that are no setting.
    """

    name: str
    config: Callable[[], type]
    flags: tuple[Flag, ...]
    body: Callable[..., Any]
    command: Any = dataclasses.field(default=None, repr=False)  # the Click command, once built

    def config_class(self) -> type:
        return self.config()


def config_class(module: str, name: str) -> Callable[[], type]:
    """A lazy reference to ``module.name``."""
    return lambda: getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Setting:
    """One leaf setting of a command's config, as the help and the docs show it."""

    key: str
    type: Any
    default: Any
    help: str
    why: str
    choices: tuple | None
    min: Any
    max: Any
    flag: Flag | None

    @property
    def names(self) -> tuple[str, ...]:
        """The flag's names (an argument's metavar), none without a flag."""
        if self.flag is None:
            return ()
        return (_param_name(self.flag).upper(),) if self.flag.argument else flag_names(self.flag, self)

    def constraint(self) -> str:
        """Choices or bounds in words: ``auto, cpu`` or ``>= 1`` or ``0 .. 1``."""
        if self.choices:
            return ", ".join(map(str, self.choices))
        if self.min is not None and self.max is not None:
            return f"{self.min:g} .. {self.max:g}"
        if self.min is not None:
            return f">= {self.min:g}"
        if self.max is not None:
            return f"<= {self.max:g}"
        return ""


def settings(spec: Spec) -> list[Setting]:
    """Every leaf setting of the spec's config class with its defaults (the class's own, per stage)."""
    by_key = {f.key: f for f in spec.flags}
    out = []
    for key, f, tp, value in spec.config_class()().settings():
        m = f.metadata
        out.append(Setting(key, tp, value, m.get("help", ""), m.get("why", ""), m.get("choices"),
                           m.get("min"), m.get("max"), by_key.get(key)))
    unknown = set(by_key) - {s.key for s in out}
    if unknown:
        raise KeyError(f"{spec.name}: flags for unknown settings {sorted(unknown)}")
    return out


def base_type(tp: Any) -> Any:
    """``X | None`` -> X; other annotations unchanged."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if type(None) in typing.get_args(tp) and len(args) == 1:
        return args[0]
    return tp


def flag_names(fl: Flag, s: Setting) -> tuple[str, ...]:
    if fl.names:
        return fl.names
    name = "--" + fl.key.rsplit(".", 1)[-1].replace("_", "-")
    if base_type(s.type) is bool and s.default is True:
        return (f"{name}/--no-{name[2:]}",)
    return (name,)


def show(value: Any) -> str:
    """A default as ``--set`` and YAML spell it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(show, value)) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _escape(text: str) -> str:
    """Rich markup would swallow ``[id]``."""
    return text.replace("[", "\\[")


def _param_name(fl: Flag) -> str:
    """The Python parameter of a flag: an argument's shows in the usage line (``MANIFESTS``)."""
    return fl.key.rsplit(".", 1)[-1] if fl.argument else "s_" + fl.key.replace(".", "__")


def _typer_param(fl: Flag, s: Setting) -> inspect.Parameter:
    """The Typer parameter of a flag; its default is the setting's (``build`` passes on only the flags
    given on the command line, so a ``--config`` file's values stand where a flag is left out)."""
    tp = base_type(s.type)
    is_list = typing.get_origin(tp) in (list, tuple)
    kw: dict[str, Any] = {"help": _escape(s.help), "show_default": s.default not in ("", [], ())}
    if s.choices:
        kw["metavar"] = "[" + "|".join(map(str, s.choices)) + "]"
    if tp in (int, float):
        kw.update(min=s.min, max=s.max)
    default = ... if fl.required else (list(s.default) if is_list else s.default)
    annotation = tp if s.default is not None or fl.required else tp | None
    if fl.argument:
        param = typer.Argument(default, **kw)
    else:
        param = typer.Option(default, *flag_names(fl, s), rich_help_panel=fl.panel, **kw)
    return inspect.Parameter(_param_name(fl), inspect.Parameter.KEYWORD_ONLY, default=param,
                             annotation=annotation)


def _given(ctx, name: str) -> bool:
    """Whether the parameter came from the command line (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _plain(value: Any) -> Any:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else value


def build(spec: Spec, help: str | None = None):
    """The command's Click command, generated from the config class (see the module docstring)."""
    from plcli.console import handle_errors

    all_settings = settings(spec)
    by_key = {s.key: s for s in all_settings}
    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
    params += [_typer_param(fl, by_key[fl.key]) for fl in spec.flags if fl.argument]
    body_params = list(inspect.signature(spec.body).parameters.values())[1:]
    hints = typing.get_type_hints(spec.body)
    params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name]) for p in body_params]
    params += [_typer_param(fl, by_key[fl.key]) for fl in spec.flags if not fl.argument]
    if any(s.flag is None for s in all_settings):
        params += _settings_params(spec)
    flag_keys = {_param_name(fl): fl.key for fl in spec.flags}
    extras = {p.name for p in body_params}

    def command(ctx: typer.Context, **kwargs):
        from plcli.config import load_config

        values = {name: kwargs.pop(name) for name in flag_keys}
        overrides = {key: _plain(values[name]) for name, key in flag_keys.items() if _given(ctx, name)}
        kwargs.pop("help_all", None)  # handled by its eager callback
        cfg = load_config(spec.config_class(), kwargs.pop("config_file", None), overrides,
                          kwargs.pop("set_", None) or ())
        assert set(kwargs) == extras, kwargs
        return spec.body(cfg, **kwargs)

    command.__name__ = spec.name.replace("-", "_")
    command.__doc__ = help
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    sub = typer.Typer(rich_markup_mode="rich", pretty_exceptions_enable=False, add_completion=False)
    sub.command(spec.name, help=help)(handle_errors(command))
    click_command = typer.main.get_command(sub)
    click_command.setting_keys = flag_keys  # click parameter name -> dotted setting (docs, tests)
    return click_command


def _settings_params(spec: Spec) -> list[inspect.Parameter]:
    def help_all(ctx: typer.Context, value: bool):
        if value and not ctx.resilient_parsing:
            print_settings(spec)
            raise typer.Exit()

    p = inspect.Parameter
    return [
        p("config_file", p.KEYWORD_ONLY, annotation=str | None,
          default=typer.Option(None, "--config", metavar="FILE", rich_help_panel=SETTINGS_PANEL,
                               help="YAML or JSON file of settings (--help-all lists them); "
                                    "flags and --set win")),
        p("set_", p.KEYWORD_ONLY, annotation=list[str] | None,
          default=typer.Option(None, "--set", metavar="KEY=VALUE", rich_help_panel=SETTINGS_PANEL,
                               help="any setting by its (dotted) key, as --help-all lists them "
                                    "(repeatable; wins over flags)")),
        p("help_all", p.KEYWORD_ONLY, annotation=bool,
          default=typer.Option(False, "--help-all", is_eager=True, callback=help_all,
                               rich_help_panel=SETTINGS_PANEL,
                               help="list every setting (key, default, help) for --set and --config, "
                                    "and exit")),
    ]


def print_settings(spec: Spec) -> None:
    """``--help-all``: every setting of the command, its flag if it has one, default and help."""
    from rich.markup import escape
    from rich.table import Table

    from plcli.console import console

    t = Table(title=f"plcli {spec.name}: every setting (--set KEY=VALUE, or a key in --config FILE)",
              title_justify="left")
    for col in ("key", "flag", "default", "help"):
        t.add_column(col, overflow="fold")
    for s in settings(spec):
        note = s.constraint()
        t.add_row(s.key, " ".join(s.names), escape(show(s.default)),
                  escape(s.help) + (f" [dim]({escape(note)})[/]" if note else ""))
    console.print(t)


class LazyCommand(TyperCommand):
    """A Typer command whose parameters are generated on first use from its ``spec`` (``build``).

    Listing the commands (``plcli --help``) needs only the name and help text; parsing, ``--help``
    of the command itself and tests that read ``params`` build it.
    """

    spec: typing.ClassVar[Spec]

    def built(self):
        if self.spec.command is None:
            self.spec.command = build(self.spec, self.help)
        return self.spec.command

    @property
    def params(self):
        return self.built().params

    @params.setter
    def params(self, value) -> None:
        pass  # Typer passes the placeholder's (none)

    @property
    def callback(self):
        return self.built().callback

    @callback.setter
    def callback(self, value) -> None:
        pass


def config_command(app: typer.Typer, name: str, config: Callable[[], type], flags: tuple[Flag, ...],
                   **command_kwargs):
    """Register ``name`` on ``app``: its flags are ``flags``, its body the decorated function
    ``body(cfg, **extras)``, whose docstring is the command's help."""

    def register(body):
        spec = Spec(name, config, tuple(flags), body)
        cls = type(f"{body.__name__.title()}Command", (LazyCommand,), {"spec": spec})

        def placeholder() -> None:
            """Replaced by the generated command (``LazyCommand``)."""

        app.command(name, cls=cls, help=inspect.getdoc(body), **command_kwargs)(placeholder)
        return body

    return register


def commands(app: typer.Typer) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(command path, Click command) for every command of ``app``, groups included, depth first."""

    def walk(cmd, path):
        yield path, cmd
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, (*path, sub_name))

    yield from walk(typer.main.get_command(app), ())


# ---------------------------------------------------------------------------------------------
# docs/options.md
# ---------------------------------------------------------------------------------------------

GENERATED = "<!-- generated by `python scripts/gen_options.py` from the config dataclasses; do not edit -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _param_names(param) -> str:
    if isinstance(param, typer.core.TyperArgument):
        return param.name.upper()
    return " ".join([*param.opts, *param.secondary_opts])


def options_markdown(app: typer.Typer) -> str:
    """docs/options.md: every option of every command, with its help, default and choices."""
    lines = [GENERATED, "", "# Options of every command", "",
             "Generated from the config dataclasses (`opt(default, help, why=..., choices=..., min=..., "
             "max=...)`),",
             "which the command line is built from. Commands with settings beyond their flags take",
             "`--set KEY=VALUE` (repeatable) and `--config FILE` (YAML or JSON) for any of them;",
             "`plcli COMMAND --help-all` lists them with their defaults. A *why* note follows a table where",
             "a setting has reasoning that does not fit its one-line help.", ""]
    for path, cmd in commands(app):
        if not path or not isinstance(cmd, TyperCommand):
            continue
        lines += [f"## plcli {' '.join(path)}", "", inspect.cleandoc(cmd.help or "").split("\n\n")[0], ""]
        spec = getattr(type(cmd), "spec", None)
        built = cmd.built() if isinstance(cmd, LazyCommand) else cmd
        keys = getattr(built, "setting_keys", {})
        by_key = {s.key: s for s in settings(spec)} if spec else {}
        whys = []
        lines += ["| option | setting | default | choices | help |", "|---|---|---|---|---|"]
        for param in built.params:
            key, names = keys.get(param.name), _param_names(param)
            default, choices, help_text = "", "", (param.help or "").replace("\\[", "[")
            if key:
                s = by_key[key]
                default, choices = ("required" if s.flag.required else f"`{show(s.default)}`"), s.constraint()
                if s.why:
                    whys.append((names.split("/")[0].split()[0], s.why))
            cells = [f"`{names}`", f"`{key}`" if key else "", default, choices, help_text]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
        rest = [s for s in by_key.values() if s.flag is None]
        if rest:
            lines += ["Settings without a flag (`--set KEY=VALUE`, or the key in `--config FILE`):", "",
                      "| setting | default | choices | help |", "|---|---|---|---|"]
            for s in rest:
                lines.append("| " + " | ".join(_cell(c) for c in (f"`{s.key}`", f"`{show(s.default)}`",
                                                                   s.constraint(), s.help)) + " |")
                if s.why:
                    whys.append((s.key, s.why))
            lines.append("")
        if whys:
            lines += ["Why:", ""] + [f"- `{name}`: {_cell(why)}" for name, why in whys] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def help_texts(app: typer.Typer) -> Iterator[tuple[str, str]]:
    """(where, help) of every option and argument of every command, for the one-line check."""
    for path, cmd in commands(app):
        for param in getattr(cmd, "params", []):
            if getattr(param, "help", None):
                yield f"plcli {' '.join(path)} {param.name}", param.help.replace("\\[", "[")
    for path, cmd in commands(app):
        spec = getattr(type(cmd), "spec", None)
        if spec is not None:
            for s in settings(spec):
                yield f"plcli {' '.join(path)} --set {s.key}", s.help


