"""The one way lit-eraser builds a LightningCLI: subclass mode for model and data, nothing run automatically.

Also the console manners both scripts share: short solver names on the command line (``--unlearn.solver cg``),
argument errors in one or two lines plus a hint instead of the full usage, and Lightning's per-Trainer chatter
(GPU/TPU banners, the litlogger tip, the tensorboardX and LeafSpec warnings, the model summary of every inner
fit) shown once per run or not at all. Warnings and errors of any other kind are left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import inspect
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lit_eraser.data  # noqa: F401 - registers the datamodules for short class names
import lit_eraser.models  # noqa: F401 - registers the recommenders
from lit_eraser.data.base import RecDataModule
from lit_eraser.models.base import RecommenderModule

CLI = TypeVar("CLI", bound=LightningCLI)

#: Options whose value may be a solver's registry name (``cg``) instead of its settings class.
SOLVER_OPTIONS = ("--unlearn.solver", "--unlearn.solver.class_path", "--unlearn.solver.help")


# ------------------------------------------------------------------------------------------ short solver names
def solver_class_paths() -> dict[str, str]:
    """Lower-case registry names and settings-class names → the settings class's import path."""
    from lit_eraser.influence import SOLVERS

    out: dict[str, str] = {}
    for name, solver in SOLVERS.items():
        settings = solver.settings_class
        path = f"{settings.__module__}.{settings.__qualname__}"
        out[name.lower()] = path
        out[settings.__name__.lower()] = path
    return out


def expand_solver_names(args: Sequence[str]) -> list[str]:
    """``--unlearn.solver cg`` (or ``=CG``, ``cgsettings``) → the settings class path jsonargparse expects.

    Any other value (a class path, ``CGSettings``, a JSON object, an unknown name) is passed through unchanged,
    so jsonargparse still reports what it cannot parse.
    """
    known = solver_class_paths()
    out = list(args)
    for i, arg in enumerate(out):
        option, sep, value = arg.partition("=")
        if option not in SOLVER_OPTIONS:
            continue
        if sep:
            if value.strip().lower() in known:
                out[i] = f"{option}={known[value.strip().lower()]}"
        elif i + 1 < len(out) and out[i + 1].strip().lower() in known:
            out[i + 1] = known[out[i + 1].strip().lower()]
    return out


SOLVER_PREFIX = "--unlearn.solver."
SOLVER_META = ("help", "class_path")


def _solver_settings_args(args: Sequence[str]) -> tuple[list[str], int | None, str | None, dict[str, str]]:
    """Split ``args`` into (the rest, index where the solver option was, the solver class given there, the
    ``--unlearn.solver.KEY VALUE`` settings)."""
    rest: list[str] = []
    position: int | None = None
    chosen: str | None = None
    settings: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        option, sep, value = arg.partition("=")
        has_value = bool(sep) or i + 1 < len(args)
        value = value if sep else (args[i + 1] if i + 1 < len(args) else "")
        step = 1 if sep else 2
        if option in ("--unlearn.solver", "--unlearn.solver.class_path") and has_value and not value.lstrip().startswith("{"):
            position = len(rest) if position is None else position
            chosen = value
            i += step
            continue
        if option.startswith(SOLVER_PREFIX) and option[len(SOLVER_PREFIX):] not in SOLVER_META and has_value:
            key = option[len(SOLVER_PREFIX):]
            key = key[len("init_args."):] if key.startswith("init_args.") else key
            position = len(rest) if position is None else position
            settings[key] = value
            i += step
            continue
        rest.append(arg)
        i += 1
    return rest, position, chosen, settings


def settings_class_of(values: Any) -> str | None:
    """The import path of the solver settings class whose fields are exactly the keys of ``values``."""
    import dataclasses

    from lit_eraser.influence import SOLVERS

    if values is None:
        return None
    if hasattr(values, "class_path") and isinstance(getattr(values, "class_path"), str):
        return values.class_path
    keys = set(values.keys() if hasattr(values, "keys") else vars(values))
    matches = [
        f"{s.settings_class.__module__}.{s.settings_class.__qualname__}"
        for s in SOLVERS.values()
        if {f.name for f in dataclasses.fields(s.settings_class)} == keys
    ]
    return matches[0] if len(matches) == 1 else None


def fold_solver_settings(args: Sequence[str], current_class: Any = None) -> list[str]:
    """``--unlearn.solver CLASS --unlearn.solver.KEY VALUE ...`` as one ``--unlearn.solver {"class_path": ...,
    "init_args": {...}}``.

    jsonargparse resolves each ``--unlearn.solver.KEY`` against the union of settings classes on its own and
    takes the first class that has the key: ``--unlearn.solver cg --unlearn.solver.tol 1e-4`` silently became
    QPSettings with default values. One object names the class once. Without a class on the command line the
    class is ``current_class()`` (the one the config files chose; called only when needed).
    """
    rest, position, chosen, settings = _solver_settings_args(args)
    if not settings:
        return list(args)
    class_path = chosen if chosen is not None else (current_class() if callable(current_class) else current_class)
    if class_path is None:
        return list(args)
    folded = json.dumps({"class_path": class_path, "init_args": settings})
    assert position is not None
    return rest[:position] + ["--unlearn.solver", folded] + rest[position:]


# ------------------------------------------------------------------------------------------ compact errors
def _parameters_of(class_path: str) -> list[str]:
    """The constructor parameters of ``class_path`` (for "did you mean"); empty when it cannot be imported."""
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
        return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    except Exception:  # noqa: BLE001 - only a suggestion
        return []


def _option_strings(parser: argparse.ArgumentParser | None) -> list[str]:
    if parser is None:
        return []
    return [s for action in parser._actions for s in action.option_strings if s.startswith("--")]


def compact_error(message: str, parser: argparse.ArgumentParser | None = None) -> tuple[str, str | None]:
    """jsonargparse's multi-line error (one block per Union member or subclass tried) as one line, with a "did
    you mean" for a misspelt option. Returns (the line, the option key it is about or ``None``)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "invalid arguments", None
    key_match = re.match(r'Parser key "([^"]+)"', lines[0])
    if key_match is None:
        text = lines[0]
        unknown = re.match(r"unrecognized arguments: (.*)", text)
        if unknown and unknown.group(1).split():
            first = unknown.group(1).split()[0].split("=")[0]
            close = difflib.get_close_matches(first, _option_strings(parser), n=1, cutoff=0.75)
            text += f" (did you mean {close[0]}?)" if close else ""
        return _shorten(text), None
    key = key_match.group(1)
    rest = [line.lstrip("- ").strip() for line in lines[1:]] + [lines[0][key_match.end():].lstrip(": ").strip()]
    option = re.search(r"Option '([^']+)' is not accepted", message) or re.search(r'Key "([^"]+)" is not', message)
    unknown_class = re.search(r"Expected a dot import path string: (\S+)", message)
    if option:
        typo = option.group(1)
        candidates = sorted({p for path in re.findall(r"class_path '([^']+)'", message) for p in _parameters_of(path)})
        close = difflib.get_close_matches(typo, candidates, n=1, cutoff=0.6)
        reason = f"--{key}.{typo} is not an option"
        other = _other_solver_option(typo) if key == "unlearn.solver" else None
        if other is not None and other[1] not in candidates and (
            not close or difflib.SequenceMatcher(None, typo, other[1]).ratio()
            > difflib.SequenceMatcher(None, typo, close[0]).ratio()
        ):
            reason += f" (did you mean --unlearn.solver {other[0]} --unlearn.solver.{other[1]}?)"
        elif close:
            reason += f" (did you mean --{key}.{close[0]}?)"
        return _shorten(reason), key
    if unknown_class:
        return _shorten(f"--{key}: unknown name or class {unknown_class.group(1)!r}"), key
    bookkeeping = re.compile(
        r"^(Does not validate against any of the .*|Subtypes: .*|Errors:|Given value type: .*|Given value: .*|"
        r"Problem with given class_path .*|Expected a path but .*)?$"
    )
    reasons = [line for line in rest if not bookkeeping.match(line)]
    return _shorten(f"--{key}: {reasons[0] if reasons else 'invalid value'}"), key


def _other_solver_option(typo: str) -> tuple[str, str] | None:
    """(solver name, setting) of the registered solver setting closest to ``typo``, if any is close."""
    import dataclasses

    from lit_eraser.influence import SOLVERS

    best: tuple[float, str, str] | None = None
    for name, solver in SOLVERS.items():
        for f in dataclasses.fields(solver.settings_class):
            ratio = difflib.SequenceMatcher(None, typo, f.name).ratio()
            if ratio >= 0.6 and (best is None or ratio > best[0]):
                best = (ratio, name, f.name)
    return None if best is None else (best[1], best[2])


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class EraserCLI(LightningCLI):
    """LightningCLI with short solver names and compact argument errors (see :func:`make_cli`)."""

    #: Extra text appended to an error about one option (``{"unlearn.solver": "solvers: ..."}``).
    error_hints: dict[str, str] = {}

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` (``None``: ``sys.argv[1:]``) after expanding short solver names; an error is printed
        in one or two lines plus a hint, exit code 2 (``LIT_ERASER_DEBUG=1`` prints jsonargparse's full text)."""
        if args is None or isinstance(args, (list, tuple)):
            args = expand_solver_names(sys.argv[1:] if args is None else args)
        try:
            if isinstance(args, (list, tuple)):
                if any(a.startswith(SOLVER_PREFIX) for a in args):
                    without = _solver_settings_args(args)[0]
                    args = fold_solver_settings(
                        args, lambda: settings_class_of(parser.parse_args(without).get("unlearn.solver"))
                    )
                self.config = parser.parse_args(list(args))
            else:  # a dict or Namespace, as LightningCLI accepts
                super().parse_arguments(parser, args)
        except argparse.ArgumentError as error:
            message = str(getattr(error, "message", None) or error)
            prog = os.path.basename((parser.prog or "").split(" ")[0]) or "the script"
            if os.environ.get("LIT_ERASER_DEBUG"):
                line, key = f"{message}", None
            else:
                line, key = compact_error(message, parser)
            hint = f"{prog} --help lists every option"
            if key is not None and self.error_hints.get(key):
                hint += "; " + self.error_hints[key].replace("{prog}", prog)
            print(f"error: {line}", file=sys.stderr)
            print(f"hint: {hint}", file=sys.stderr)
            raise SystemExit(2) from None


def make_cli(cli_class: type[CLI], args: list[str] | None, description: str = "") -> CLI:
    """Parse ``args`` (``None``: ``sys.argv``) and instantiate model, datamodule and trainer (no fit/test)."""
    quiet_lightning()
    parser_kwargs: dict[str, Any] = {"description": description} if description else {}
    if issubclass(cli_class, EraserCLI):
        parser_kwargs["exit_on_error"] = False  # EraserCLI.parse_arguments prints the compact error and exits 2
    return cli_class(
        RecommenderModule,
        RecDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        save_config_callback=None,
        auto_configure_optimizers=False,
        args=args,
        parser_kwargs=parser_kwargs,
    )


# ------------------------------------------------------------------------------------------ quiet logs
#: Lightning's info lines that every Trainer repeats: shown once per run.
ONCE = re.compile(
    r"^(GPU available|TPU available|HPU available|IPU available|Loading `train_dataloader` to estimate"
    r"|`Trainer\(\w+=[^)]*\)` was configured so)"
)
#: Lightning's messages that say nothing about this run: never shown.
DROP = re.compile(r"litlogger")
#: Warnings (by message) that Lightning emits for every Trainer and that a user cannot act on.
IGNORED_WARNINGS = (
    r"Starting from v1\.9\.0, `tensorboardX` has been removed",  # a Trainer with the default logger=True
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # lightning's pytree shim under a newer torch
    r".*`LeafSpec` is deprecated",
)
RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


class LightningChatterFilter(logging.Filter):
    """Drops the litlogger tip and repeats of the per-Trainer banners (see :data:`ONCE`, :data:`DROP`)."""

    def __init__(self) -> None:
        super().__init__("lit_eraser.quiet")
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to judge
            return True
        if DROP.search(message):
            return False
        if ONCE.match(message):
            if message in self.seen:
                return False
            self.seen.add(message)
        return True


_FILTER = LightningChatterFilter()


def quiet_lightning() -> None:
    """Install the filters (idempotent) and start a new run: each banner is shown once more."""
    _FILTER.seen.clear()
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for pattern in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


@contextlib.contextmanager
def one_model_summary() -> Iterator[None]:
    """Within the block, only the first Trainer.fit prints its model summary (an experiment fits the same
    recommender up to four times: original, retrain, warm retrain, its control)."""
    from lightning.pytorch.callbacks.model_summary import ModelSummary

    original = ModelSummary.on_fit_start
    shown = False

    def on_fit_start(self: ModelSummary, trainer: Any, pl_module: Any) -> None:
        nonlocal shown
        if shown:
            return
        shown = True
        original(self, trainer, pl_module)

    ModelSummary.on_fit_start = on_fit_start  # type: ignore[method-assign]
    try:
        yield
    finally:
        ModelSummary.on_fit_start = original  # type: ignore[method-assign]
