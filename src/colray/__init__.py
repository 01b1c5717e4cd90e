"""colray: datasets into late-interaction (multivector) search indexes in Qdrant, on Ray.

The package root only sets process-wide defaults that must precede importing Ray.
"""

import os

# Under `uv run`, Ray would otherwise repackage the working directory and rebuild the
# environment for every worker, and workers would run in that copy: relative store paths
# then land in Ray's temp folder. colray's workers use this interpreter's environment.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

__version__ = "0.1.0"
