"""gridrun: YAML grids of small PyTorch experiments on Ray Tune, reported honestly."""

__version__ = "0.1.0"


class GridrunError(Exception):
    """A user-facing error: its message is one line that names the problem and the fix."""
