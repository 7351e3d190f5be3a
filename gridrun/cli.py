"""gridrun: launch | report | status | train | models | tensorboard | completion (benchmarks: make bench).

Every subcommand's options are defined here; the modules behind them are imported only when
their subcommand runs (Ray is loaded by `launch` alone).

Exit codes: 0 done; 1 something failed (a launch's trial failed, train's trial diverged, an internal error);
2 bad input or a refusal (a wrong spec, option or file; nothing was started); 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

from .errors import GridrunError, __version__

OVERRIDE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")  # a `key=value` override, wherever it stands
PREFIX = "gridrun: error: "                            # the one prefix of every refusal


def _storage() -> str:
    """Where experiments live: $GRIDRUN_STORAGE, else runs/ (relative to the working directory)."""
    return os.environ.get("GRIDRUN_STORAGE") or "runs"


def _reports() -> str:
    """Where reports go: $GRIDRUN_REPORTS, else reports/."""
    return os.environ.get("GRIDRUN_REPORTS") or "reports"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (no usage block) and exits 2."""

    def error(self, message):
        sub = self.prog.split(" ", 1)[1:]  # 'launch' of 'gridrun launch'; nothing for gridrun itself
        self.exit(2, f"{PREFIX}{sub[0] + ': ' if sub else ''}{message} (see `{self.prog} -h`)\n")


def _json_object(text: str) -> dict:
    try:
        v = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg}): write e.g. '{{\"rotate_deg\": 5}}'") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError("must be a JSON object such as '{\"rotate_deg\": 5}'")
    return v


def _optional(kind):
    def parse(text: str):
        if text.lower() in ("none", "null", ""):
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r} (or 'none')") from None
    parse.__name__ = kind.__name__
    return parse


def _add_config_options(p: argparse.ArgumentParser) -> None:
    """One --option per TrainConfig field: its type, named choices, help line and section all come
    from config.py's fields, so `gridrun train` and the config never drift apart."""
    from .augment import OPS, POLICIES
    from .config import DEFAULTS, FIELD_TYPES, TrainConfig, field_extra
    from .models import list_models

    groups = {}
    listed = {"model": f"; one of: {', '.join(list_models())}",  # the registries, known only at run time
              "augment": f"; ops: {', '.join(OPS)}; recipes: {', '.join(POLICIES)}"}
    for name, info in TrainConfig.model_fields.items():
        if name == "out_dir":
            continue
        section = field_extra(name)["section"]
        if section not in groups:
            groups[section] = p.add_argument_group(f"{section} options")
        ft, comment, extra = FIELD_TYPES[name], info.description or "", listed.get(name, "")
        shown = json.dumps(DEFAULTS[name]) if ft.kind == "dict" else DEFAULTS[name]
        text = (f"{comment}{extra} " if comment or extra else "") + f"(default {shown})"
        _config_option(groups[section], "--" + name.replace("_", "-"), ft, text.replace("%", "%%"))


def _config_option(g, flag: str, ft, text: str) -> None:
    """One config field's option: JSON for a mapping, --x/--no-x for a switch, else typed (and its choices)."""
    if ft.kind == "dict":
        g.add_argument(flag, type=_json_object, default=argparse.SUPPRESS, metavar="JSON", help=text)
    elif ft.kind == "bool":
        g.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
    elif ft.kind == "list":  # e.g. --rungs 3 6 (whole numbers); --rungs alone is the empty list
        g.add_argument(flag, type=int, nargs="*", default=argparse.SUPPRESS, metavar="N", help=text)
    else:
        kind = {"int": int, "float": float, "str": str}[ft.kind]
        g.add_argument(flag, type=_optional(kind) if ft.optional else kind, default=argparse.SUPPRESS,
                       choices=ft.choices, help=text)  # choices: shown, checked, completed


def _trial_config(path: str) -> dict:
    """A trial's config.json (or its folder) as TrainConfig fields: `_meta` dropped, and where it
    ran (out_dir, data_dir) left to this command's flags and environment."""
    from .storage.layout import CONFIG
    from .storage.safeio import Unreadable, read_json

    p = Path(path)
    p = p / CONFIG if p.is_dir() else p
    if not p.is_file():
        raise GridrunError(f"--config {path}: no such file: give a trial's config.json, e.g. runs/NAME/TRIAL/config.json")
    try:
        cfg = read_json(p)  # bounded, as every config.json gridrun reads
    except Unreadable as e:
        raise GridrunError(f"--config {p}: {e}: give a trial's config.json") from None
    if not isinstance(cfg, dict):
        raise GridrunError(f"--config {p}: holds {type(cfg).__name__}, not a config (a JSON object of fields)")
    return {k: v for k, v in cfg.items() if k not in ("_meta", "out_dir", "data_dir")}


def cmd_train(args) -> int:
    from .config import TrainConfig
    from .train import Folders, train

    opts = {k: v for k, v in vars(args).items() if k not in ("cmd", "func", "out", "config")}
    if args.out is not None:
        _check_out(Path(args.out))
    base = _trial_config(args.config) if args.config else {}
    try:
        cfg = TrainConfig.from_dict({**base, **opts, "out_dir": args.out})
    except GridrunError as e:
        raise GridrunError(f"--config {args.config}: {e}" if base else str(e)) from None
    print(f"gridrun train: {cfg.model} for {cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.optimizer} "
          f"lr {cfg.lr}, scheduler {cfg.scheduler}, augment {cfg.augment}, seed {cfg.seed}"
          + (f" (from {args.config})" if args.config else "") + (f" -> {cfg.out_dir}" if cfg.out_dir else ""), flush=True)

    def line(m, _state):
        print(f"epoch {m['epoch']:3d}/{cfg.epochs}  train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f}  "
              f"val loss {m['val_loss']:.4f} acc {m['val_acc']:.4f}  test acc {m['test_acc']:.4f}  "
              f"lr {m['lr']:.2e}  {m['seconds']:.1f}s  {m['images_per_s']:.0f} img/s", flush=True)

    try:
        result = train(cfg, Folders(on_epoch=line))
    except OSError as e:  # a full disk under --out: name the folder, not a temp file or nothing
        from .diskio import disk_error, disk_line

        if disk_error(e) is None or not cfg.out_dir:
            raise
        raise GridrunError(disk_line(cfg.out_dir, disk_error(e), "train")) from None
    final = result["final"] or {}
    print(f"{result['status']}: {result['params']:,} params, {result['epochs']} epochs on {result['device']}, "
          f"final val acc {final.get('val_acc', float('nan')):.4f}, test acc {final.get('test_acc', float('nan')):.4f}")
    return 0 if result["status"] == "ok" else 1


def _check_out(out: Path) -> None:
    """`train --out` writes only into a new or empty-of-results folder, never over a trial,
    into an experiment folder, or into a folder inside one (the report would read it as a trial).
    A folder holding any of layout.RESULT_FILES is someone's results: writing there would mix two
    configs in one folder."""
    from .storage.layout import GROUP_FILE, LOCK, MANIFEST, RESULT_FILES

    if out.exists() and not out.is_dir():
        raise GridrunError(f"--out {out} is a file: give a folder for the trial's files")
    fix = "give a new folder (or remove this one first if you mean to replace its results)"
    if out.is_dir():
        held = next((f for f in (*RESULT_FILES, MANIFEST, GROUP_FILE, LOCK) if (out / f).exists()), None)
        if held is not None:
            raise GridrunError(f"--out {out} already holds results ({held}): {fix}")
    for parent in out.resolve().parents:
        if any((parent / f).exists() for f in (MANIFEST, GROUP_FILE, LOCK)):
            raise GridrunError(f"--out {out} is inside the experiment folder {parent}: its report would read this "
                               f"run as one of its trials; give a folder outside it")


def cmd_models(args) -> int:
    import pandas as pd

    from .models import count_params, list_models, model_family

    rows = [{"model": n, "family": model_family(n), "params": count_params(n)} for n in list_models(args.pattern)]
    if not rows:
        raise GridrunError(f"no model matches {args.pattern!r}: run `gridrun models` for the list")
    print(pd.DataFrame(rows).to_markdown(index=False, intfmt=","))
    return 0


def cmd_launch(args) -> int:
    from .launch import launch

    tokens = [args.spec, *args.overrides]  # overrides may stand anywhere, even before the spec
    spec = next((t for t in tokens if not OVERRIDE_RE.match(t) or Path(t).is_file()), args.spec)
    overrides = [t for t in tokens if t is not spec]
    return launch(spec, overrides=overrides, dry_run=args.dry_run, address=args.address, name=args.name,
                  storage=args.storage, max_concurrent=args.max_concurrent, fresh=args.fresh, fuse=args.fuse)


def cmd_report(args) -> int:
    from .report import BrokenExperiments, report
    from .storage.backends import local_view

    try:
        report(args.targets, out=args.out, top_k=args.top_k, storage=local_view(args.storage, args.targets),
               reports_dir=_reports())
    except BrokenExperiments as e:  # the others were reported: something failed, nothing was refused
        print(f"{PREFIX}{e}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args) -> int:
    from .status import status
    from .storage.backends import local_view

    storage = local_view(args.storage, [args.name] if args.name else [])  # s3://: a mirror in the cache
    return status(args.name, storage=storage, watch=args.watch, as_json=args.json, every_s=args.every)


def cmd_export(args) -> int:
    from .export import export
    from .storage.backends import local_view

    export(args.name, out=args.out, storage=local_view(args.storage, [args.name]))  # s3://: a mirror in the cache
    return 0


def cmd_best(args) -> int:
    from .best import best
    from .storage.backends import local_view

    storage = local_view(args.storage, [args.name])  # s3://: a mirror in the cache
    print(best(args.name, storage=storage, how="yaml" if args.yaml else "command" if args.command else "text"))
    return 0


def cmd_restore(args) -> int:
    from .export import restore

    restore(args.source, storage=args.storage, name=args.name)
    return 0


def cmd_tensorboard(args) -> int:
    """TensorBoard over one experiment (or all of them): curves and the HParams dashboard, read
    from a view of links (hparams.build_view) that is kept up to date while it runs."""
    import signal
    import subprocess
    import time

    from . import hparams
    from .storage.backends import local_path, local_view
    from .results import find_experiments

    names = [args.name] if args.name else []
    remote = local_path(args.storage) is None
    storage = (local_view(args.storage, names) if remote  # s3://: a mirror in the cache, refreshed below
               else local_path(args.storage) if "://" in args.storage else args.storage)
    logdir = Path(storage) / args.name if args.name else Path(storage)
    if not logdir.is_dir():
        raise GridrunError(f"no experiment folder {logdir}: run `gridrun launch SPEC` first, or pass --storage")
    exe = shutil.which("tensorboard") or os.path.join(os.path.dirname(sys.executable), "tensorboard")
    if not os.path.exists(exe):
        raise GridrunError("tensorboard is not installed in this environment: `pip install tensorboard`")
    experiments = [logdir] if args.name else find_experiments([], storage)
    view = hparams.view_dir(logdir)
    n = hparams.build_view(Path(storage), experiments, view)  # runs named EXPERIMENT/TRIAL
    print(f"gridrun tensorboard: {n} trials of {len(experiments)} experiment(s) from {logdir}, viewed through "
          f"{view}", flush=True)
    tb = subprocess.Popen([exe, "--logdir", str(view), "--port", str(args.port), *args.tensorboard_args])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops TensorBoard too, not only us
    try:
        while tb.poll() is None:
            time.sleep(5)
            if remote:
                local_view(args.storage, names)
            hparams.sync_view(Path(storage), experiments, view)  # trials started since, new event files
    except KeyboardInterrupt:
        return 0
    finally:
        _stop_child(tb)
    return tb.returncode


STOP_GRACE_S = 10.0  # how long TensorBoard may take to stop after SIGTERM before it is killed


def _stop_child(proc) -> None:
    """Stop a child process so that it cannot hang us: SIGTERM, then SIGKILL after STOP_GRACE_S
    (a loaded machine's TensorBoard took over 30 s to stop)."""
    import subprocess

    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cmd_completion(args) -> int:
    """A completion script for every subcommand and option (shtab reads the argparse parser)."""
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


_FILES = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}  # shtab.FILE, without importing shtab


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _port(text: str) -> int:
    v = _positive(text)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {v}")
    return v


def _at_most(hi: int):
    """A whole number in 1..hi (the spec's own bound for the same knob)."""
    def parse(text: str) -> int:
        v = _positive(text)
        if v > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi:,}, got {v}")
        return v
    return parse


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not 0.2 <= v <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0.2 and 3600 seconds, got {v}")
    return v


_WHERE = "(default $GRIDRUN_STORAGE, else runs/)"


def build_parser(train_options: bool = True) -> argparse.ArgumentParser:
    """The whole command line; without `train_options` the train subcommand lacks its --FIELD
    options, whose help lists the models and augmentations and so imports torch (~5 s here):
    status, report and launch need none of them."""
    ap = _Parser(prog="gridrun", description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n")[-1].strip())
    ap.add_argument("--version", action="version", version=f"gridrun {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    _add_launch(sub)
    _add_readers(sub)
    _add_train(sub, train_options)
    _add_tools(sub)
    ap.commands = sub.choices  # main() words a refusal by the subcommand's own parser
    return ap


def _add_launch(sub) -> None:
    """`gridrun launch`: a spec, its overrides and how to run it."""
    p = sub.add_parser("launch", help="run a YAML grid as Ray Tune trials (resumes or grows an existing one)")
    p.add_argument("spec", help="grid spec, e.g. grids/smoke.yaml").complete = _FILES
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="change the spec from the command line, anywhere on the line: seeds=10 base.epochs=5 "
                        "grid.batch_size=[64,256] 'grid.lr={loguniform: [1e-4, 1e-1]}' samples=8 (quote braces from the shell)")
    p.add_argument("--dry-run", action="store_true", help="print the trials and the resource plan, run nothing")
    p.add_argument("--address", default=None, help="Ray cluster to join (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--name", default=None, help="experiment name (default: the spec's name)")
    p.add_argument("--storage", default=_storage(), help=f"results root every node sees {_WHERE}")
    p.add_argument("--max-concurrent", type=_at_most(100_000), default=None, help="at most N trials at once")
    p.add_argument("--fuse", type=_at_most(256), default=None,
                   help="train up to K same-architecture trials as one batched model (the spec's fuse:)")
    p.add_argument("--fresh", action="store_true",
                   help="start over instead of resuming (the old folder is kept as NAME.prev-N)")
    p.set_defaults(func=cmd_launch)


def _add_readers(sub) -> None:
    """The subcommands that read experiment folders: report, status, export, best, restore."""
    p = sub.add_parser("report", help="markdown tables, ensemble and plots from experiment folders")
    p.add_argument("targets", nargs="*", metavar="NAME|PATH", help="experiments (default: all under runs/)")
    p.add_argument("--out", default=None, help="markdown file (default $GRIDRUN_REPORTS/<folder name>.md, "
                                                "else reports/<folder name>.md)")
    p.add_argument("--top-k", type=_at_most(10_000), default=None, help="ensemble size (default: the spec's report.top_k, or 5)")
    p.add_argument("--storage", default=_storage(), help=f"where experiment names are looked up {_WHERE}")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("status", help="a running or finished grid at a glance, from its files (never Ray)")
    p.add_argument("name", nargs="?", default=None, metavar="NAME|PATH", help="experiment (default: the newest)")
    p.add_argument("--storage", default=_storage(), help=f"where experiment names are looked up {_WHERE}")
    p.add_argument("--watch", action="store_true", help="refresh until the grid is done (Ctrl-C to stop)")
    p.add_argument("--every", type=_seconds, default=5.0, help="seconds between refreshes with --watch")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("export", help="a slim copy of an experiment to commit: no weights, checkpoints, logits or "
                                      "Ray state; report, status, load and a relaunch read it")
    p.add_argument("name", metavar="NAME|PATH", help="experiment under --storage, or its folder")
    p.add_argument("--out", default=None, help="a folder (default exports/NAME) or FILE.tar.gz")
    p.add_argument("--storage", default=_storage(), help=f"where experiment names are looked up {_WHERE}")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("best", help="the config chosen on validation (the report's rule), with mean ± std and n")
    p.add_argument("name", metavar="NAME|PATH", help="experiment under --storage, or its folder")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--yaml", action="store_true", help="print it as a spec-ready YAML block")
    how.add_argument("--command", action="store_true", help="print the `gridrun train --config` command of its "
                                                            "first seed's trial")
    p.add_argument("--storage", default=_storage(), help=f"where experiment names are looked up {_WHERE}")
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("restore", help="an exported folder or .tar.gz back into the storage folder")
    p.add_argument("source", metavar="FOLDER|FILE.tar.gz", help="what `gridrun export` wrote")
    p.add_argument("--storage", default=_storage(), help=f"where it goes: STORAGE/NAME {_WHERE}")
    p.add_argument("--name", default=None, help="the experiment's name there (default: the exported one)")
    p.set_defaults(func=cmd_restore)


def _add_train(sub, train_options: bool) -> None:
    """`gridrun train`: --config, --out and (with `train_options`) one option per config field."""
    p = sub.add_parser("train", help="train one config here, without Ray",
                       description="Train one config here, without Ray. With no options it trains tinynet_7k with "
                                   "gridrun's default recipe, the best measured on the tiny nets: SGD with Nesterov "
                                   "momentum, one-cycle to lr 0.2 at batch 128, weight decay 5e-4, rotate+affine "
                                   "augmentation, 15 epochs (the defaults below).")
    p.add_argument("--config", default=None, metavar="CONFIG_JSON",
                   help="start from a trial's config.json (e.g. runs/NAME/TRIAL/config.json) to reproduce it; "
                        "options given beside it override its fields").complete = _FILES
    p.add_argument("--out", default=None, help="folder for the trial's files (default: write none)")
    if train_options:
        _add_config_options(p)
    p.set_defaults(func=cmd_train)


def _add_tools(sub) -> None:
    """models, tensorboard and completion."""
    p = sub.add_parser("models", help="list registered models with family and parameters")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'resnet*'")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("tensorboard", help="TensorBoard over runs/NAME (or all of runs/), with HParams",
                       usage="gridrun tensorboard [NAME] [--storage S] [--port P] [-- TENSORBOARD OPTIONS]")
    p.add_argument("name", nargs="?", default=None, help="experiment (default: all under --storage)")
    p.add_argument("--storage", default=_storage(), help=f"where experiment names are looked up {_WHERE}")
    p.add_argument("--port", type=_port, default=6006)
    p.set_defaults(tensorboard_args=[])  # what follows `--`, given to TensorBoard as it is, e.g. --bind_all
    p.set_defaults(func=cmd_tensorboard)

    p = sub.add_parser("completion", help="print a shell completion script: "
                                          "`eval \"$(gridrun completion bash)\"` (zsh, tcsh likewise)")
    p.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    p.set_defaults(func=cmd_completion)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit finds no closed pipe to complain about."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passed = []
    if argv[:1] == ["tensorboard"] and "--" in argv:  # `gridrun tensorboard NAME -- --bind_all`
        passed, argv = argv[argv.index("--") + 1:], argv[:argv.index("--")]
    ap = build_parser(train_options=not argv or argv[0] in ("train", "completion") or argv[0].startswith("-"))
    args, extra = ap.parse_known_args(argv)
    if extra and getattr(args, "cmd", None) == "launch" and all(OVERRIDE_RE.match(x) for x in extra):
        args.overrides = [*args.overrides, *extra]  # `launch SPEC --name X seeds=1`: an override after an option
    elif extra:
        ap.commands.get(getattr(args, "cmd", None), ap).error(f"unrecognized arguments: {' '.join(extra)}")
    if passed:
        args.tensorboard_args = passed
    try:
        return args.func(args)
    except GridrunError as e:
        print(f"{PREFIX}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gridrun: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gridrun status --json | head -1`: the reader has what it wanted
        _quiet_stdout()
        return 0
    except OSError as e:  # a full disk, a read-only folder: what and where, in one line
        from .diskio import DISK_ERRNOS, disk_line

        if e.errno in DISK_ERRNOS:
            where = Path(os.fsdecode(e.filename)).parent if e.filename else "the folder gridrun writes to"
            print(f"{PREFIX}{disk_line(where, e, args.cmd)}", file=sys.stderr)
        else:
            print(f"{PREFIX}{e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return 2
    except Exception as e:
        if os.environ.get("GRIDRUN_DEBUG"):
            raise
        first = str(e).splitlines()[0][:300] if str(e) else ""
        print(f"gridrun: internal error: {type(e).__name__}: {first} (set GRIDRUN_DEBUG=1 for the traceback, "
              f"and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
