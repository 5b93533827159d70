"""The benchmark scripts still load against the code they measure (they are not run here:
speed is measured by running bench/, not by timed tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_each_benchmark_script_imports_what_it_measures(script: str) -> None:
    # import the script as a module (its main() is behind __main__), with bench/ on the path
    # as when it is run; an import of a name the code no longer has fails here
    code = (
        f"import runpy, sys; sys.path.insert(0, {str(BENCH)!r}); "
        f"runpy.run_path({str(BENCH / script)!r}, run_name='bench_import')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
