"""Why fusing trials loses on a CPU: one conv layer of tinynet_7k (10 -> 16 channels, 3x3, on
26x26 maps, batch 128), forward and backward, for K members computed

  separate   as K ordinary convs one after another,
  grouped    as one grouped conv over K x channels (what vmap turns the K convs into),
  vmap       through torch.func.vmap over stacked weights (the fused trainer's path),

timed in one process. Prints ms per K-member step and the ratios.

    python benchmarks/grouped_conv.py [--device cuda] [--ks 1,2,4,8,16,32]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.func import vmap


def timed(fn, device, reps: int) -> float:
    for _ in range(3):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ks", default="1,2,4,8,16")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--cin", type=int, default=10)
    ap.add_argument("--cout", type=int, default=16)
    ap.add_argument("--size", type=int, default=26)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    d = a.device
    print(f"device {d}; torch {torch.__version__}; threads {torch.get_num_threads()}; conv {a.cin}->{a.cout} 3x3 on "
          f"{a.size}x{a.size}, batch {a.batch}, forward + backward per member step")
    for k in [int(x) for x in a.ks.split(",")]:
        x = torch.randn(k, a.batch, a.cin, a.size, a.size, device=d)
        w = torch.randn(k, a.cout, a.cin, 3, 3, device=d, requires_grad=True)

        def separate():
            for i in range(k):
                F.conv2d(x[i], w[i]).sum().backward()

        def grouped():
            xg = x.permute(1, 0, 2, 3, 4).reshape(a.batch, k * a.cin, a.size, a.size)
            F.conv2d(xg, w.reshape(k * a.cout, a.cin, 3, 3), groups=k).sum().backward()

        def vmapped():
            vmap(F.conv2d)(x, w).sum().backward()

        ms = {n: timed(f, d, a.reps) for n, f in (("separate", separate), ("grouped", grouped), ("vmap", vmapped))}
        print(f"K={k:>2}: separate {ms['separate']:8.2f} ms  grouped {ms['grouped']:8.2f} ms  vmap {ms['vmap']:8.2f} ms"
              f"  | separate / vmap = {ms['separate'] / ms['vmap']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
