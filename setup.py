"""gridrun: run grids of small deep-learning experiments on Ray Tune, report them honestly."""
import re
from pathlib import Path

from setuptools import find_packages, setup

# the version is written once, in gridrun/errors.py (gridrun.__version__, `gridrun --version`)
VERSION = re.search(r'^__version__ = "([^"]+)"', (Path(__file__).parent / "gridrun" / "errors.py").read_text(), re.M)[1]

setup(
    name="gridrun",
    version=VERSION,
    description="YAML grids of PyTorch trials on Ray Tune, packed onto GPUs; honest reports.",
    packages=find_packages(include=["gridrun", "gridrun.*"]),
    package_data={"gridrun": ["models/golden_params.json"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "ray[tune]>=2.60,<2.61",  # tested with 2.60.0 (Tune's API moved a lot in 2.4x-2.6x)
        "pandas",
        "tabulate",
        "tensorboard",
        "pyyaml",
        "matplotlib",  # report plots (PNG, Agg backend)
        "numpy",
        "protobuf",  # hparams.py builds TensorBoard's HParams protos (google.protobuf)
        "pyarrow",  # launch.py finds a trial's checkpoint in remote storage (pyarrow.fs)
        "pydantic>=2",  # the spec's shape (spec.py); Ray depends on it too, but gridrun imports it itself
        "optuna>=4",  # a study's sampler (TPE asked a fused group at a time) and importance (study.py)
        "shtab",  # `gridrun completion bash|zsh|tcsh`: completion scripts from the argparse parser (pure Python)
    ],
    extras_require={
        # s3:// storage: the experiment lock is an S3 object taken by conditional writes (boto3)
        "s3": ["boto3"],
        "test": ["pytest", "hypothesis",
                 "pytest-timeout",  # a hanging test fails instead of eating CI's limit
                 # the HParams page checked in a real browser: drives the system's
                 # Chromium (apt-get install chromium); the test skips without either
                 "playwright",
                 # a real S3-protocol server on loopback for the object-storage tests
                 "moto[server]>=5.0.9", "boto3"],
    },
    entry_points={"console_scripts": ["gridrun=gridrun.cli:main"]},
)
