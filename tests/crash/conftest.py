"""Crash tests reuse the integration harness (tests/integration/conftest.py):
its fixtures (cluster, workdir, pair), its failure report hook and its
helpers are loaded from there and re-exported, so that `from conftest import
...` in a crash test gets the same names."""

import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_INTEGRATION = _HERE.parent / "integration"
_spec = importlib.util.spec_from_file_location(
    "mfs_integration_conftest", _INTEGRATION / "conftest.py")
_harness = importlib.util.module_from_spec(_spec)
sys.modules["mfs_integration_conftest"] = _harness
_spec.loader.exec_module(_harness)

globals().update({k: v for k, v in vars(_harness).items()
                  if not (k.startswith("__") and k.endswith("__"))})
