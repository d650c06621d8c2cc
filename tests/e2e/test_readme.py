"""The README's commands work for a new user: its main command, read from README.md and run verbatim,
from a copy of the tree in a new venv with nothing of this project's outside it on PATH (the
interpreter running the tests, with vnetbe and vng installed, is not on it), exits 0 and prints the
whole table; and the other commands work in that venv after the plain `pip install .`.

The command runs as written; only its length is the test command's: VNETBE_BENCH_COUNT/REPEAT/MAX_CV
make the bench's runs short (one run of 5000 frames per configuration: this test checks that the whole
table comes out, not the figures; by hand, with the defaults, it takes ~16 minutes in the lab here)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# PATH without the directories of the interpreter running the tests (pyenv's shims and bin).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAIN_TIMEOUT_S = 40 * 60

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.lab]


def readme_command(marker: str) -> str:
    """The indented command line under ``<!-- marker -->`` in the README."""
    lines = README.read_text().splitlines()
    try:
        line = lines[lines.index(f"<!-- {marker} -->") + 1]
    except (ValueError, IndexError):
        pytest.fail(f"README.md has no `<!-- {marker} -->` line followed by the command")
    assert line.startswith("    "), f"the line under <!-- {marker} --> is not an indented command: {line!r}"
    return line.strip()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """(a copy of the tree's tracked files, a new venv, the environment a new user's shell has)."""
    base = tmp_path_factory.mktemp("readme")
    tree = base / "vnetbe"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = ROOT / name
        if src.is_file():          # a file deleted in the work tree but not yet in git is left out
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tree / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {"PATH": f"{venv}/bin:{SYSTEM_PATH}", "VIRTUAL_ENV": str(venv), "HOME": os.environ.get("HOME", "/root"),
           "LANG": "C.UTF-8", "TERM": "dumb"}
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "http_proxy", "https_proxy", "CI"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(VNETBE_BENCH_COUNT="5000", VNETBE_BENCH_REPEAT="1", VNETBE_BENCH_MAX_CV="off")
    assert shutil.which("vnetbe", path=env["PATH"]) is None, "a vnetbe outside the venv is on the new PATH"
    yield tree, venv, env
    shutil.rmtree(base, ignore_errors=True)


def test_readme_main_command_runs_the_whole_bench_in_a_new_venv(fresh):
    tree, venv, env = fresh
    cmd = readme_command("main command")
    r = subprocess.run(["sh", "-c", cmd], cwd=tree, env=env, capture_output=True, text=True, timeout=MAIN_TIMEOUT_S)
    assert r.returncode == 0, f"`{cmd}` exited {r.returncode}:\n{r.stderr[-3000:]}"
    assert (venv / "bin" / "vnetbe").exists() and (venv / "bin" / "vng").exists()   # pip install . gave both
    # The table: every datapath against the raw loop, for each scenario the bench runs by default.
    for dp in ("user", "uring", "vhost", "raw"):
        assert re.search(rf"^\s*{dp}\b", r.stdout, re.M), f"no {dp} row in the table:\n{r.stdout}"
    assert "on virtme-ng (lab" in r.stdout or os.path.exists("/dev/vhost-net")   # where it ran


def test_other_commands_work_after_the_plain_pip_install(fresh, tmp_path):
    tree, venv, env = fresh
    vnetbe = str(venv / "bin" / "vnetbe")
    if not os.path.exists(vnetbe):   # the main command's test installs it; alone, install it here
        subprocess.run([str(venv / "bin" / "python3"), "-m", "pip", "install", "-q", "."], cwd=tree, env=env,
                       check=True)
    r = subprocess.run([vnetbe, "costs", "--quick", "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["schema"]
    bench_json = tmp_path / "bench.json"
    r = subprocess.run([vnetbe, "bench", "--datapath", "user", "--scenario", "tx", "--repeat", "1", "--count",
                        "20000", "--output", str(bench_json)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([vnetbe, "report", "--bench", str(bench_json), "--out", str(tmp_path / "rep")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rep" / "report.md").exists() and list((tmp_path / "rep").glob("*.png")), \
        "the report has no charts: matplotlib should come with pip install ."
    r = subprocess.run([vnetbe, "setup", "--check", "bench"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "MISSING" not in r.stdout, r.stdout
