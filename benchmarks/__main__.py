"""python -m benchmarks [NAME [--device auto|cpu|cuda] [--out FILE.jsonl] [ARGS]]: list or run one."""
from __future__ import annotations

import argparse
import importlib
import sys

from gridrun.errors import GridrunError, did_you_mean

from . import Bench, BenchError, names, resolve_device


def parser(name: str, doc: str, module) -> argparse.ArgumentParser:
    """The harness's two options, then the benchmark's own."""
    ap = argparse.ArgumentParser(prog=f"python -m benchmarks {name}", description=doc)
    ap.add_argument("--device", default="auto", help="auto (default): cuda when torch sees a GPU, else cpu; "
                                                     "or cpu, cuda, cuda:N")
    ap.add_argument("--out", default=None, help="append every row (JSON, one per line) to this file")
    module.add_args(ap)
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    known = names()
    if not argv or argv[0] in ("-h", "--help"):
        width = max(map(len, known))
        print("python -m benchmarks NAME [--device auto|cpu|cuda] [--out FILE.jsonl] [ARGS]  (NAME -h: its options)")
        for n, doc in known.items():
            print(f"  {n:<{width}}  {doc}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in known:
        print(f"benchmarks: no benchmark {name!r}{did_you_mean(name, known)}; `python -m benchmarks` lists them",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{name}")
    a = parser(name, known[name], module).parse_args(rest)
    try:
        a.device = resolve_device(a.device)
        module.run(a, Bench(name, a.device, a.out))
    except (BenchError, GridrunError) as e:
        print(f"benchmarks {name}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
