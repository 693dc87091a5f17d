"""The package installs as modtrain.* and never puts `datasets` or `modules` at the top."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, cwd: Path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env)


@pytest.mark.slow  # seconds each: the fast loop stays under 30 s on a slower CPU
def test_import_from_outside_the_checkout(tmp_path):
    result = _run("import importlib.util, modtrain.datasets, modtrain.modules, modtrain.surrogates, modtrain.recipes;"
                  "print(modtrain.datasets.__file__);"
                  "print(importlib.util.find_spec('datasets'), importlib.util.find_spec('modules'))", tmp_path)
    assert result.returncode == 0, result.stderr
    datasets_file, specs = result.stdout.splitlines()
    assert Path(datasets_file).parent == ROOT / "datasets"
    assert specs == "None None"


@pytest.mark.slow  # seconds each: the fast loop stays under 30 s on a slower CPU
def test_wheel_maps_folders_under_modtrain(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info",
                                                                "__pycache__", "bench"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("modtrain-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "modtrain/datasets/clevr.py" in names and "modtrain/modules/__init__.py" in names
    assert "modtrain/surrogates/__init__.py" in names and "modtrain/recipes/__init__.py" in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"modtrain", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    # installed from the wheel, modtrain.datasets imports from there, outside any checkout
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    import os
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = _run("import modtrain.datasets.clevr as c; print(c.__file__)", tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(site))


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
LARGE_TENSOR = ("import modtrain, os, torch; x = torch.empty(64 << 18).fill_(1.0); "  # 64 MiB of float32
                "print(os.environ['THP_MEM_ALLOC_ENABLE']); "
                "print(sum(int(line.split()[1]) for line in open('/proc/self/smaps') "
                "if line.startswith('AnonHugePages')))")


@pytest.mark.slow  # a second: a fresh interpreter importing torch
@pytest.mark.parametrize("user", [None, "0"])
def test_large_tensors_use_huge_pages_unless_the_user_says_no(tmp_path, user):
    """modtrain turns on PyTorch's THP_MEM_ALLOC_ENABLE before torch allocates (a fresh batch of
    features then costs a few faults, not one per 4 KiB page) and keeps a value the user set."""
    if not THP.exists() or "[never]" in THP.read_text():
        pytest.skip("this kernel has no transparent huge pages")
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if user is not None:
        env["THP_MEM_ALLOC_ENABLE"] = user
    result = _run(LARGE_TENSOR, tmp_path, env)
    assert result.returncode == 0, result.stderr
    value, huge_kib = result.stdout.split()
    assert value == (user or "1")
    if user is None:
        assert int(huge_kib) >= 32 << 10  # at least half the tensor in 2 MiB pages
    elif "[always]" not in THP.read_text():
        assert int(huge_kib) < 32 << 10
