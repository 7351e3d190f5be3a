"""The loss, written once: each member's mean cross-entropy with its own label smoothing, for
training (step.py), scoring (run.py) and timing the strategies (strategies.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(out: torch.Tensor, y: torch.Tensor, smoothing: torch.Tensor | None = None) -> torch.Tensor:
    """(K,) mean cross-entropy of (K, B, C) logits against (K, B) labels, each member with its
    label smoothing ((K,); None: none), as F.cross_entropy(label_smoothing=...) computes it.
    Without smoothing (scoring), F.cross_entropy itself, member by member: its mean adds up in
    another order than `.mean`, and a validation loss must be torch's to the last bit (a plateau
    schedule on val_loss compares it; an older trial's metrics.csv is reproduced)."""
    if smoothing is None:
        return torch.stack([F.cross_entropy(o, t) for o, t in zip(out.float(), y)])
    logp = F.log_softmax(out.float(), -1)
    nll = -logp.gather(-1, y[..., None]).squeeze(-1)                   # (K, B)
    ls = smoothing[:, None]
    return ((1 - ls) * nll + ls * -logp.mean(-1)).mean(1)
