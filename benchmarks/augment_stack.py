"""engine.step.augmented, old vs new common-case path (every member warps alike), in one run:

    python benchmarks/augment_stack.py
"""
import time, torch
from gridrun.augment import Augment, Draws
torch.set_num_threads(1)
aug = Augment("rotate+affine")
for K, B in [(1, 128), (8, 128)]:
    x = torch.rand(K, B, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    draws = [aug.draw(B, g, x.device, (28, 28)) for _ in range(K)]
    def old():
        j = Augment.apply(torch.stack([x[k] for k in range(K)]).flatten(0, 1), Draws.cat(draws))
        return torch.stack([j[k * B:(k + 1) * B] for k in range(K)]).flatten(0, 1).view(x.shape)
    def new():
        return Augment.apply(x.flatten(0, 1), Draws.cat(draws)).view(x.shape)
    assert torch.equal(old(), new())
    for f in (old, new): f()
    res = {}
    for name, f in (("old", old), ("new", new)):
        t = time.perf_counter(); n = 0
        while time.perf_counter() - t < 2: f(); n += 1
        res[name] = (time.perf_counter() - t) / n * 1e3
    print(f"K={K} B={B}: old {res['old']:.3f} ms, new {res['new']:.3f} ms, ratio {res['old']/res['new']:.2f}x, equal outputs")
