"""Regenerate golden_params.json: `python -m gridrun.models.golden` (then review the diff)."""
import json
from pathlib import Path

from . import count_params, is_zoo, list_models

if __name__ == "__main__":
    path = Path(__file__).with_name("golden_params.json")
    path.write_text(json.dumps({n: count_params(n) for n in list_models() if is_zoo(n)}, indent=1) + "\n")
    print(f"wrote {path}")
