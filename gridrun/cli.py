"""gridrun: launch | report | train | models | tensorboard (benchmarks: make bench)."""
from __future__ import annotations

import argparse
import json
import sys
import typing
from dataclasses import MISSING, fields

from . import GridrunError


def _add_config_options(p: argparse.ArgumentParser) -> None:
    """One --option per TrainConfig field, so `gridrun train` and the config never drift apart."""
    from .config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.name == "out_dir":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        hint = str(hints[f.name])
        if "dict" in hint:
            p.add_argument(flag, type=json.loads, default=argparse.SUPPRESS, metavar="JSON",
                           help="JSON object (default {})")
        elif "bool" in hint:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=f"(default {default})")
        else:
            kind = int if "int" in hint and "float" not in hint else float if "float" in hint else str
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=f"(default {default})")


def cmd_train(args) -> int:
    from .config import TrainConfig
    from .train import train

    opts = {k: v for k, v in vars(args).items() if k not in ("cmd", "func", "out")}
    cfg = TrainConfig.from_dict({**opts, "out_dir": args.out})
    print(f"gridrun train: {cfg.model} for {cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.optimizer} "
          f"lr {cfg.lr}, scheduler {cfg.scheduler}, augment {cfg.augment}, seed {cfg.seed}"
          + (f" -> {cfg.out_dir}" if cfg.out_dir else ""), flush=True)

    def line(m, _state):
        print(f"epoch {m['epoch']:3d}/{cfg.epochs}  train loss {m['train_loss']:.4f} acc {m['train_acc']:.4f}  "
              f"val loss {m['val_loss']:.4f} acc {m['val_acc']:.4f}  test acc {m['test_acc']:.4f}  "
              f"lr {m['lr']:.2e}  {m['seconds']:.1f}s  {m['images_per_s']:.0f} img/s", flush=True)

    result = train(cfg, on_epoch=line)
    final = result["final"] or {}
    print(f"{result['status']}: {result['params']:,} params, {result['epochs']} epochs on {result['device']}, "
          f"final val acc {final.get('val_acc', float('nan')):.4f}, test acc {final.get('test_acc', float('nan')):.4f}")
    return 0 if result["status"] == "ok" else 1


def cmd_models(args) -> int:
    import pandas as pd

    from .models import count_params, list_models, model_family

    rows = [{"model": n, "family": model_family(n), "params": count_params(n)} for n in list_models(args.pattern)]
    if not rows:
        raise GridrunError(f"no model matches {args.pattern!r}: run `gridrun models` for the list")
    print(pd.DataFrame(rows).to_markdown(index=False, intfmt=","))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gridrun", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("train", help="train one config here, without Ray")
    _add_config_options(p)
    p.add_argument("--out", default=None, help="folder for the trial's files (default: write none)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="list registered models with family and parameters")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'resnet*'")
    p.set_defaults(func=cmd_models)

    from . import launch, report  # each adds its own subcommands (launch also: tensorboard)

    launch.add_parser(sub)
    report.add_parser(sub)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GridrunError as e:
        print(f"gridrun: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gridrun: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
