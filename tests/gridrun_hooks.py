"""The tests' hooks, never shipped: gridrun imports this file in every process where
$GRIDRUN_HOOKS names it (conftest sets it; gridrun/hooks.py says how it reaches Ray's trials).

- chaos_net: a small working net that can be told to crash, for testing retries and failures.
- the hold: with GRIDRUN_HOOKS_HOLD="EPOCH:PATH" a run, once it has reported epoch EPOCH, writes
  PATH.held-TRIAL and waits until PATH exists, so a test can signal or kill a launch while its
  trials are known to be mid-grid, on a fast machine as on a slow one (conftest.held_env).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from gridrun.models._registry import register_model

HOLD = "GRIDRUN_HOOKS_HOLD"


def after_epoch(epoch: int, out_dir: str | None) -> None:
    """The hold: after epoch EPOCH, say so in PATH.held-TRIAL and wait for PATH."""
    at, _, path = os.environ.get(HOLD, "").partition(":")
    if not at or epoch != int(at):
        return
    Path(f"{path}.held-{Path(out_dir or 'run').name}").write_text(str(os.getpid()))
    while not os.path.exists(path):
        time.sleep(0.05)


class ChaosNet(nn.Module):
    """Conv + GAP + linear; raises RuntimeError after `fail_after` training steps when
    fail='always', or once per marker file when fail='once' (the marker records the crash);
    with fail='nan' its training outputs are NaN from then on (a run that diverges at a known step).
    With `hold` (a folder), training stops after `fail_after` steps, says so in a file named
    after its node's address and process, and goes on once `hold`/go exists: a test can act
    while trials are known to be mid-grid on known hosts."""

    def __init__(self, fail: str = "never", fail_after: int = 0, marker: str | None = None, hold: str | None = None):
        super().__init__()
        if fail not in ("never", "once", "always", "nan") or (fail == "once" and not marker):
            raise ValueError("fail is never|once|always|nan, and 'once' needs a marker path")
        self.fail, self.fail_after, self.marker, self.steps, self.hold = fail, fail_after, marker, 0, hold
        self.body = nn.Sequential(nn.Conv2d(1, 8, 5, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps += 1
            if self.steps > self.fail_after and self._should_fail():
                raise RuntimeError(f"chaos_net: injected failure after {self.fail_after} steps")
            if self.hold and self.steps == self.fail_after + 1:
                self._wait()
            if self.fail == "nan" and self.steps > self.fail_after:
                return self.fc(self.body(x)) * float("nan")
        return self.fc(self.body(x))

    def _wait(self) -> None:
        try:
            import ray

            where = ray.util.get_node_ip_address()
        except Exception:  # not in a Ray worker
            where = "local"
        open(os.path.join(self.hold, f"held-{where}-{os.getpid()}"), "w").close()
        while not os.path.exists(os.path.join(self.hold, "go")):
            time.sleep(0.05)

    def _should_fail(self) -> bool:
        if self.fail == "always":
            return True
        if self.fail == "once" and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            return True
        return False


@register_model
def chaos_net(fail: str = "never", fail_after: int = 0, marker: str | None = None, hold: str | None = None) -> nn.Module:
    return ChaosNet(fail, fail_after, marker, hold)
