"""The engine: every trial is a group of K >= 1 members trained as one, every member dimension stacked.

  files.py       what training writes into a trial folder (through storage.layout.TrialDir); Folders, the sink
  optim.py       one optimizer (SGD/Adam/AdamW over stacked tensors)
  schedule.py    each member's hyperparameters at a step (functions of the step; plateau's state)
  loss.py        the loss, written once
  strategies.py  how K members are computed: plain (K = 1), loop, vmap, blockdiag
  step.py        the training step over static buffers, its CUDA-graph recording, the epoch
  group.py       a group's setup (device, data, members, strategy), retirement (the group shrinks)
  state.py       the resumable state: its layout, version and the older layout's conversion
  run.py         the epoch loop, scoring, precise BN: train(configs, sink) -> results
"""
from .files import Folders
from .run import train

__all__ = ["Folders", "train"]
