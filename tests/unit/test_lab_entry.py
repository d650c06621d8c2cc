"""The bench re-runs itself inside the kernel lab in the caller's directory. From a source tree after
a plain `pip install .`, that directory holds an unbuilt `vnetbe/`: the lab must start the installed
package, not the tree (`python3 -m vnetbe` would take the tree: -m puts the directory first)."""
from __future__ import annotations

import argparse
import subprocess
import sys

from vnetbe.tools import benchcli


def test_the_lab_entry_starts_this_vnetbe_even_beside_a_decoy_package(tmp_path):
    decoy = tmp_path / "vnetbe"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy in the current directory was imported')\n")
    p = argparse.ArgumentParser()
    benchcli.add_bench_arguments(p)
    argv = benchcli._lab_argv(benchcli.make_plan(p.parse_args([]), lab=True), False, False)
    assert argv[1:3] == ["-c", benchcli._LAB_ENTRY] and argv[3] == "bench"
    p = subprocess.run([sys.executable, "-c", benchcli._LAB_ENTRY, "bench", "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "usage: vnetbe bench" in p.stdout
