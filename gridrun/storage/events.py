"""TensorBoard event files written whole (the scalars and HParams sessions that hparams.py makes)."""
from __future__ import annotations

import io
import os
import time
import uuid
from pathlib import Path

from .layout import EVENTS
from .safeio import atomic_save


def write_event_file(folder: str | os.PathLike, records: list[bytes], suffix: str) -> Path:
    """A new TensorBoard event file of `records` (serialized Event protos), written whole here
    and now: TensorBoard's EventFileWriter writes from its own thread, which prints its
    traceback on a full disk instead of raising to the caller."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    buf = io.BytesIO()
    writer = RecordWriter(buf)
    for r in records:
        writer.write(r)
    path = Path(folder, f"{EVENTS[:-1]}{int(time.time()):010d}.{uuid.uuid4().hex[:12]}.{os.getpid()}{suffix}")
    atomic_save(path, buf.getvalue())
    return path

