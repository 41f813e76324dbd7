"""`lavila demo` interrupted inside a training stage: one line, exit 130, and the rerun resumes inside the stage.

A real subprocess at the tiny sizes: a fail point holds the baseline's training at step 2 while the test sends
SIGINT; the loop saves at the step boundary, the CLI prints one line. The rerun of the same command resumes the
stage from its checkpoint and must end with the table of an uninterrupted run of the same seed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("pycocoevalcap")

SCRIPT = r"""
import dataclasses, sys
import lavila.demo_recipe as R
tiny = dataclasses.replace(R.tiny_sizes(), de_steps=8)
R.RecipeSizes = lambda **kw: dataclasses.replace(tiny, **{k: v for k, v in kw.items() if k != "ablations"})
from lavila.cli import main
raise SystemExit(main(["demo", "--output-dir", sys.argv[1], "--no-progress"]))
"""


def _demo(out, env=None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(out)], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_sigint_in_a_training_stage_is_one_line_and_the_rerun_matches_an_uninterrupted_run(tmp_path) -> None:
    whole = _demo(tmp_path / "whole")
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err

    out = tmp_path / "cut"
    trace = tmp_path / "trace.txt"
    cut = _demo(out, env={"LAVILA_FAILPOINTS": "train.step_done@2=1:sleep(30)", "LAVILA_FAILPOINTS_TRACE": str(trace)})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (trace.is_file() and "train.step_done\t2" in trace.read_text()):
        time.sleep(0.2)
    cut.send_signal(signal.SIGINT)  # during the hold at step 2 of the baseline
    _, err = cut.communicate(timeout=300)
    assert cut.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    # the loop's acknowledgement (as in lavila train), then the one line of the outcome
    assert lines[:-1] == ["Ctrl-C: saving a checkpoint at the end of this step (press Ctrl-C again to abort "
                          "without saving)"], err
    assert lines[-1].startswith("lavila demo: interrupted by SIGINT at step ") and "rerun" in lines[-1], err
    assert "Traceback" not in err
    assert (out / "baseline" / "checkpoint.pt").is_file() and not (out / "stage_baseline.done").exists()

    rerun = _demo(out)
    stdout, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert "auto-resuming" in stdout  # inside the stage, from its checkpoint, not from step 0
    a = json.loads((tmp_path / "whole" / "recipe_results.json").read_text())
    b = json.loads((out / "recipe_results.json").read_text())
    assert a["table"] == b["table"]
    assert a["stages"]["baseline"]["loss_last"] == b["stages"]["baseline"]["loss_last"]
