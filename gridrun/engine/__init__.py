"""The engine: every trial is a group of K >= 1 members trained as one.

  files.py       what training writes into a trial folder (through store.TrialDir)
  optim.py       one optimizer (SGD/Adam/AdamW over stacked tensors) and the members' schedules
  strategies.py  how K members are computed: plain (K = 1), loop, vmap, blockdiag
  step.py        the training step over static buffers, its CUDA-graph recording, the epoch
  group.py       a group's setup (device, data, members, strategy), retirement (the group shrinks), state
  run.py         the epoch loop, scoring, precise BN: run(configs) -> results
"""
from .run import run

__all__ = ["run"]
