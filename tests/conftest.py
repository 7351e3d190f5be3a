"""Shared fixtures: small generated IDX files (no MNIST needed), one Ray for the whole run."""
import os
import time
from pathlib import Path

import numpy as np
import pytest

os.environ["GRIDRUN_NO_DOWNLOAD"] = "1"  # tests never touch the network
# The tests' nets (chaos_net) and hold, in this process and every one it starts (gridrun/hooks.py)
os.environ["GRIDRUN_HOOKS"] = str(Path(__file__).with_name("gridrun_hooks.py"))

from gridrun.data import write_idx  # noqa: E402
MNIST_DIR = os.environ.get("GRIDRUN_DATA")


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 'digits': class k is a bright 6x6 block at one of ten places, jittered,
    on faint noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(y):
        r = 4 + 12 * (k // 5) + rng.integers(-1, 2)
        c = 1 + 5 * (k % 5) + rng.integers(0, 2)
        x[i, r:r + 6, c:c + 6] = 255
    return x, y


def make_data_dir(folder: Path, n_train=1200, n_test=400, gz=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    xtr, ytr = synthetic_digits(n_train, 0)
    xte, yte = synthetic_digits(n_test, 1)
    write_idx(folder / f"train-images-idx3-ubyte{ext}", xtr)
    write_idx(folder / f"train-labels-idx1-ubyte{ext}", ytr)
    write_idx(folder / f"t10k-images-idx3-ubyte{ext}", xte)
    write_idx(folder / f"t10k-labels-idx1-ubyte{ext}", yte)
    return folder


# Tiers: `make test` runs everything (CI); `make test-fast` leaves out what starts Ray or runs
# long (`-m "not ray and not slow"`). A test that uses the `ray_local` fixture is marked `ray`
# here, so no test file has to remember to.
def pytest_configure(config):
    config.addinivalue_line("markers", "ray: starts or joins a Ray cluster (left out of make test-fast)")
    config.addinivalue_line("markers", "slow: takes more than ~20 s on a 2-core CPU, or waits out a real "
                            "timeout of 10 s or more (left out of make test-fast)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not MNIST_DIR or not Path(MNIST_DIR).is_dir():
        pytest.skip("GRIDRUN_DATA is not set to the MNIST folder (CI sets it to ../shared/data/mnist)")
    return Path(MNIST_DIR)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole run: 2 CPUs and one logical GPU (tests have no real one)."""
    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


class Stop(Exception):
    """What `stop_after`'s callback raises: a run interrupted right after an epoch's state was saved."""


def stop_after(epoch: int):
    """An `on_epoch(metrics, state_path)` callback that interrupts a run (raises Stop) once it has
    reported epoch `epoch`, as a killed trial would be, leaving that epoch's state to resume from."""
    def on_epoch(metrics: dict, state_path=None) -> None:
        if metrics["epoch"] == epoch:
            raise Stop(f"stopped after epoch {epoch}")
    return on_epoch


def held_env(epoch: int, release: Path) -> dict:
    """The environment for a `gridrun launch` subprocess whose every trial, once it has reported
    epoch `epoch`, writes RELEASE.held-TRIAL and waits until `release` exists (gridrun_hooks.py's
    hold): a test acts on a launch known to be mid-grid, then releases it. The launch hands the
    hooks to its trials in the job's runtime_env (launch._connect), so they reach them on a Ray
    the driver joins as on one it starts."""
    from gridrun.hooks import load

    return {**os.environ, load().HOLD: f"{epoch}:{release}"}


def held(release: Path) -> list[str]:
    """The trials now held by `held_env(epoch, release)`, by folder name."""
    return sorted(p.name.split(".held-", 1)[1] for p in release.parent.glob(f"{release.name}.held-*"))


def signal_when_held(proc, release: Path, sig, what: str, wait_s: float = 240) -> str:
    """Wait until a trial of `proc` (a launch started with held_env) is held, send `sig` to the
    launch, release the hold; the launch's output."""
    try:
        deadline = time.time() + wait_s
        while not held(release):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=180)
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
    return out


def write_spec(path: Path, data_dir: Path, **over) -> Path:
    """A small grid on synthetic data: 2 models x 2 seeds unless overridden."""
    import yaml

    spec = {"name": path.stem, "data": {"val_size": 200, "subset": 600, "data_dir": str(data_dir)},
            "base": {"epochs": 2, "batch_size": 50, "lr": 0.01, "scheduler": "onecycle", "optimizer": "adam",
                     "weight_decay": 0.0, "augment": "none"},
            "grid": {"model": ["tinynet_7k", "chaos_net"]}, "seeds": 2,
            "resources": {"cpu": 1, "gpu": 0.5}, "retries": 1}
    over = dict(over)
    spec["base"] = {**spec["base"], **over.pop("base", {})}  # a test's base adds to this one
    spec.update(over)
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def tmpfs(tmp_path):
    """mount(SIZE) -> a fresh tmpfs of that size, e.g. "600k" (root only; the test is skipped where
    mounting is not allowed); unmounted after the test."""
    import subprocess

    mounts = []

    def mount(size: str):
        mnt = tmp_path / f"disk{len(mounts)}"
        mnt.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a small tmpfs here (needs root)")
        mounts.append(mnt)
        return mnt

    yield mount
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
