"""What the benchmark scripts share: each configuration runs in a fresh child process (so its peak memory is its
own) that prints one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_child(script: str, spec: dict) -> dict:
    """Run ``script --child SPEC`` in a fresh interpreter; its last stdout line, parsed as JSON."""
    proc = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed for {spec}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
