"""Ray job entrypoint: `colray ingest` for one config, with the run report printed for the cluster.

Run by `colray submit`, or: ray job submit --working-dir . -- python jobs/ingest.py --config FILE
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import colray  # noqa: F401  (shipped as a py_module by `colray submit`, or installed)
except ImportError:  # plain `ray job submit --working-dir .` ships only this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from colray.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", "--emit-report", *sys.argv[1:]]))
