"""Run the RPC multiplexing demo (examples/rpc_mux.py) on each backend."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "examples" / "rpc_mux.py"


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "backend",
    [
        "asyncio",
        pytest.param(
            "asyncio+uvloop",
            marks=pytest.mark.skipif(
                sys.platform == "win32", reason="uvloop does not support Windows"
            ),
        ),
        "trio",
    ],
)
def test_demo_accounts_for_every_reply(backend: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(DEMO),
            f"--backend={backend}",
            "--calls=300",
            "--concurrency=50",
            "--timeout-share=0.1",
            "--seed=7",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    summary = dict(re.findall(r"^\s+([a-z0-9 ]+?)\s+: (.*)$", output, re.MULTILINE))
    assert summary["backend"] == backend
    assert summary["lost"] == "0"
    assert summary["waiters left"] == "0"
    assert summary["wrong"] == "0"
    assert summary["result"] == "OK"
    # With seed 7, some of the 300 calls use a tiny timeout; each of them whose
    # request was sent gets its reply back late.
    timeouts, unsent = map(
        int,
        re.fullmatch(
            r"(\d+) \((\d+) before the request was sent\)", summary["timeouts"]
        ).groups(),  # type: ignore[union-attr]
    )
    assert timeouts > 0
    assert summary["late replies"].split()[0] == str(timeouts - unsent)
