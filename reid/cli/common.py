"""What every subcommand shares: options anywhere on the line, the config, the engine with weights."""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable
from types import ModuleType

from reid.config import ConfigError, load_config


class CheckFailed(SystemExit):
    """A check the command ran failed (not a usage error): the message, exit status 1
    (``reid.cli.main.run_command``)."""


_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*$")


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parses the command's options anywhere on the line; every other token is a config override.

    The parser declares its options and a positional ``opts`` (``nargs="*"``). Tokens that are
    one of its option strings (``--flag``, ``--key value``, ``--key=value``) are options, the
    rest are ``KEY VALUE`` overrides in order, so values such as ``-1e-3`` or ``[]`` pass through
    untouched and ``--no-progress`` may come after the overrides. A list option
    (``nargs="+"`` or ``"*"``) takes the tokens up to the next ``--option`` or upper-case config
    ``KEY`` (``--seeds 0 1 OPTIM.MAX_EPOCH 1``).
    """
    tokens = list(sys.argv[1:] if argv is None else argv)
    actions = {name: action for action in parser._actions for name in action.option_strings}
    options: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        action = actions.get(token.split("=", 1)[0]) if token.startswith("-") else None
        if action is None:
            overrides.append(token)
        else:
            options.append(token)
            if action.nargs in ("+", "*") and "=" not in token:
                # a list option takes the tokens up to the next option or config KEY
                while i + 1 < len(tokens) and not tokens[i + 1].startswith("--") and not _CONFIG_KEY.match(tokens[i + 1]):
                    options.append(tokens[i + 1])
                    i += 1
            elif action.nargs != 0 and "=" not in token and i + 1 < len(tokens):
                options.append(tokens[i + 1])
                i += 1
        i += 1
    args = parser.parse_args(options)
    args.opts = overrides
    load_plugins(getattr(args, "plugin", None) or [])
    return args


# plugin files imported so far (real path -> module): a second import of one file reuses it
_PLUGIN_FILES: dict[str, ModuleType] = {}


def _import_plugin_file(name: str) -> ModuleType:
    """Imports the Python file ``name`` once, as a module named after the file."""
    path = os.path.realpath(os.path.abspath(os.path.expanduser(name)))
    if path in _PLUGIN_FILES:
        return _PLUGIN_FILES[path]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    stem = os.path.splitext(os.path.basename(path))[0]
    if not stem.isidentifier() or stem in sys.modules:
        stem = f"reid_plugin_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"not a Python file: {path}")
    module = _exec_module(spec, stem)
    _PLUGIN_FILES[path] = module
    return module


def _exec_module(spec: importlib.machinery.ModuleSpec, name: str) -> ModuleType:
    """Runs the module of ``spec`` as ``sys.modules[name]`` (removed again if its code raises)."""
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_plugin(name: str) -> ModuleType:
    """Imports the ``--plugin`` module ``name``: a path to a ``.py`` file, or a dotted module name
    importable as it is (an installed package) or from the current directory.

    The current directory is searched without editing the import path: when the module's
    top-level package is not importable, it is looked up in the current directory and loaded from
    there, and the rest of the dotted name is imported from it.

    Raises:
        Exception: whatever importing the module raised (``ModuleNotFoundError`` when it is
            nowhere, ``FileNotFoundError`` for a missing file, any error of the module's code).
    """
    if name.endswith(".py") or os.sep in name or (os.altsep and os.altsep in name):
        return _import_plugin_file(name)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        top = name.split(".")[0]
        if exc.name != top:  # the module was found; something it imports is missing
            raise
        spec = importlib.machinery.PathFinder.find_spec(top, [os.getcwd()])
        if spec is None or spec.loader is None:
            raise
    _exec_module(spec, top)
    return importlib.import_module(name)


def load_plugins(names: list[str]) -> None:
    """Imports every ``--plugin`` module in order (before the config is loaded, so that a module can
    register datasets with torchreid that ``DATA.SOURCES`` and ``DATA.TARGETS`` then name).

    Raises:
        SystemExit: ``cannot import plugin NAME: reason``, one line (exit status 2 through
            ``reid.cli.main.run_command``).
    """
    for name in names:
        try:
            import_plugin(name)
        except Exception as exc:
            plain = isinstance(exc, (ModuleNotFoundError, FileNotFoundError))  # their text says it all
            reason = str(exc) if plain else f"{type(exc).__name__}: {exc}"
            raise SystemExit(f"cannot import plugin {name}: {' '.join(reason.split())}") from exc


def new_parser(command: str, doc: str | None, weights: bool = False) -> argparse.ArgumentParser:
    """The parser of ``reid <command>``, its help text the module docstring, with the options every
    command has: ``--config`` (and ``--weights`` for the commands that load a trained model),
    ``--plugin`` (repeatable; imported by :func:`parse_with_overrides`) and ``--debug``."""
    parser = argparse.ArgumentParser(
        prog=f"reid {command}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="YAML config file (overrides the defaults of reid/config/__init__.py)")
    if weights:
        parser.add_argument("--weights", required=True, help="checkpoint (ours) or a model state dict")
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE",
        help="import MODULE first (a dotted module name importable from the current directory, or a path "
        "to a .py file; repeatable), e.g. one that registers its own dataset with torchreid for DATA.SOURCES",
    )
    parser.add_argument(
        "--debug", action="store_true",
        help="print the traceback of an error too (a usage error prints one line and exits with status 2)",
    )
    return parser


def load_checked_config(config: str, opts: list[str]):
    """The frozen config of ``config`` and ``opts``, checked against what its model can do.

    Raises:
        ConfigError: a bad key or value, or an option the model does not support.
    """
    from reid.builders import model_recipe

    cfg = load_config(config, opts)
    model_recipe(cfg)
    return cfg


def config_or_exit(args: argparse.Namespace):
    """The frozen config of ``args.config`` and ``args.opts``; a config error exits with its message."""
    try:
        return load_checked_config(args.config, args.opts)
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from exc


def check_weights_config(cfg, checkpoint: dict, weights: str, log: logging.Logger) -> None:
    """Checks ``cfg`` against the config stored in ``checkpoint`` (read from ``weights``) before its
    weights are loaded into the configured model (``reid.config.model_differences``).

    Logs the differences that do not change the model; logs that a plain state dict (no config)
    is not compared.

    Raises:
        ConfigError: a key the weights depend on differs (each one named, old -> new).
    """
    from reid.builders import model_recipe
    from reid.config import model_differences

    saved = checkpoint.get("config")
    if not isinstance(saved, dict) or not saved:
        log.info("%s holds no config (a torchreid checkpoint or a plain state dict): the config is not compared with it", weights)
        return
    refused, allowed = model_differences(saved, cfg, model_recipe(cfg).model_keys)
    if refused:
        raise ConfigError(
            f"the config differs from the one {weights} was trained with in keys its weights depend on: "
            f"{', '.join(map(str, refused))}; use the checkpoint's values"
        )
    if allowed:
        log.info(
            "the config differs from the checkpoint's (%s) in keys that do not change its model: %s",
            weights, ", ".join(map(str, allowed)),
        )


def with_values_before_added_keys(saved: dict) -> dict:
    """A checkpoint's config with the values that keys added to the config since then had in
    effect, where that value is not the key's default (a copy; ``saved`` is left as it is).

    ``SAM.OBJECTIVE`` (default ``erase``): a PCB+SAM checkpoint written before the key existed
    trained with the printed form (``printed``), so a resume compares that value with the run's
    and refuses a silent switch of the objective in mid-run (docs/method.md section 3).
    """
    sam = saved.get("SAM")
    if not isinstance(sam, dict) or not sam.get("ENABLED") or "OBJECTIVE" in sam:
        return saved
    return {**saved, "SAM": {**sam, "OBJECTIVE": "printed"}}


def check_resume_config(cfg, log: logging.Logger):
    """``--resume``: checks ``cfg`` against the config stored in the checkpoint the run resumes
    from (``OUTPUT_DIR/checkpoints/``), before anything is built (``reid.config.config_differences``).

    Logs the safe differences (the run uses their new values); nothing to check without a
    checkpoint (the engine then starts from scratch) or without a config in it (logged). A key
    added since the checkpoint was written counts with the value it had then where that is not
    its default (:func:`with_values_before_added_keys`).

    Returns:
        The checkpoint read here (on the CPU), a ``reid.engine.checkpoint.ReadCheckpoint``, for the
        engine to restore without reading the file again (``ReidEngine.run(resume_state=...)``);
        None when there is none.

    Raises:
        ConfigError: a key that changes the model or the optimisation state differs (each one named,
            old -> new).
    """
    from reid.config import config_differences
    from reid.engine.checkpoint import checkpoint_path, read_checkpoint

    path = checkpoint_path(cfg.OUTPUT_DIR)
    if not os.path.isfile(path):
        return None
    checkpoint = read_checkpoint(path)
    saved = checkpoint.state.get("config")
    if not isinstance(saved, dict) or not saved:
        log.warning("--resume: %s holds no config: the run's config is not compared with it", path)
        return checkpoint
    refused, allowed = config_differences(with_values_before_added_keys(saved), cfg)
    if refused:
        raise ConfigError(
            f"--resume: the config differs from the checkpoint's ({path}) in keys that change the model or "
            f"the optimisation state: {', '.join(map(str, refused))}; resume with the checkpoint's values, or "
            "start a new run in another OUTPUT_DIR"
        )
    if allowed:
        log.info(
            "--resume: the config differs from the checkpoint's (%s) in keys that are safe to change: %s",
            path, ", ".join(map(str, allowed)),
        )
    return checkpoint


def load_weights(model, state: dict, weights: str, cfg) -> None:
    """Loads ``state`` into ``model`` strictly, after the model's recipe adapted the model to it
    (``ModelRecipe.fit_state``: a torchreid classifier sized for other identities); exits with a
    short reason when it does not fit, naming the arch the weights are of when the recipe can tell."""
    from reid.builders import load_state_strict, model_recipe

    recipe = model_recipe(cfg)
    recipe.fit_state(model, state)
    try:
        load_state_strict(model, state)
    except ValueError as exc:
        other = recipe.weights_of(state)
        if other:
            raise SystemExit(f"{weights} holds weights of {other}, not of {recipe.describe(cfg)}") from exc
        raise SystemExit(f"{weights} ({recipe.describe(cfg)}): {exc}") from exc


def engine_with_weights(cfg, weights: str, log_name: str, progress: bool = True):
    """Logging to ``OUTPUT_DIR/<log_name>.log``, the configured engine, and ``weights`` loaded into
    its model (our checkpoint or a plain state dict, read with ``weights_only=True``), after the
    config was checked against the checkpoint's (:func:`check_weights_config`)."""
    from reid.builders import build_engine, setup_logging
    from reid.engine.checkpoint import load_checkpoint, model_state_from_checkpoint

    setup_logging(cfg.OUTPUT_DIR, log_name)
    log = logging.getLogger(log_name)
    checkpoint = load_checkpoint(weights, map_location="cpu")
    check_weights_config(cfg, checkpoint, weights, log)
    engine = build_engine(cfg, progress=progress)
    load_weights(engine.model, model_state_from_checkpoint(checkpoint), weights, cfg)
    log.info("loaded weights from %s", weights)
    return engine


def layer_or_exit(model, layer: str, source: str) -> None:
    """Exits with the reason unless ``layer`` names a submodule of ``model``; ``source`` says where
    the name came from (checked before any work, so a typo costs nothing)."""
    from reid.explain import resolve_layer

    try:
        resolve_layer(model, layer)
    except ValueError as exc:
        raise SystemExit(f"cannot explain layer {layer!r} ({source}): {exc}") from exc


def parse_run(text: str) -> tuple[str, str, str]:
    """``NAME=CONFIG:CHECKPOINT`` -> ``(name, config, checkpoint)`` (the first ``:`` splits); an argparse type."""
    name, sep, rest = text.partition("=")
    config, sep2, weights = rest.partition(":")
    if not (sep and sep2 and name and config and weights):
        raise argparse.ArgumentTypeError(f"expected NAME=CONFIG:CHECKPOINT, got {text!r}")
    return name, config, weights


def releases_output_dirs(main: Callable) -> Callable:
    """Decorates a command's ``main``: the folder locks it took (``setup_logging`` takes
    ``OUTPUT_DIR``'s, :func:`reid.io.claim_folder`) are released when it returns or fails, so that
    commands run one after another in one process (tests, notebooks) do not block each other."""
    from reid.io import held_folders, release_folder

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None):
        before = held_folders()
        try:
            return main(argv)
        finally:
            for folder in held_folders() - before:
                release_folder(folder)

    return wrapper
