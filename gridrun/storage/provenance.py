"""The one provenance: which code and which software produced a result (config.json's _meta,
a launch record)."""
from __future__ import annotations

from pathlib import Path

from ..errors import __version__


def versions(with_ray: bool = False) -> dict:
    """Versions a result depends on (config.json's _meta; with Ray's, a launch record's)."""
    import platform

    import torch

    out = {"gridrun": __version__}
    if with_ray:  # the installed distribution's version, without importing ray
        from importlib.metadata import version

        out["ray"] = version("ray")
    out.update(torch=torch.__version__, python=platform.python_version())
    if torch.cuda.is_available():
        out.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   gpu=torch.cuda.get_device_name(0))
    return out


def provenance(diff: bool = True) -> dict:
    """Which code and which software produced a launch's results: versions (Ray's too), the GPU
    and driver nvidia-smi names, the git commit and dirty tree (with the diff of tracked files,
    unless `diff` is False)."""
    import subprocess

    out = versions(with_ray=True)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if smi.returncode == 0 and smi.stdout.strip():
            out["gpu"], out["driver"] = [s.strip() for s in smi.stdout.splitlines()[0].split(",")][:2]
    except (OSError, subprocess.SubprocessError):
        pass
    repo = Path(__file__).resolve().parents[2]  # the checkout gridrun/storage/ sits in

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode == 0:
            status = git("status", "--porcelain", "--untracked-files=no")
            dirty = bool(status.stdout.strip())
            out["git"] = {"commit": head.stdout.strip(), "dirty": dirty}
            if dirty and diff:
                out["git"]["diff"] = git("diff", "HEAD").stdout
    except (OSError, subprocess.SubprocessError):
        pass
    return out

