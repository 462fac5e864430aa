"""Execute every tutorial notebook and fail on any cell error; check the outputs committed with them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbclient  # test extras: a missing one should fail the suite, not skip the tutorials quietly
import nbformat
import pytest

from tests.conftest import shared_file

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
KERNEL = "python3"
# Lines a notebook's last code cell must print: proof it ran to the end and its checks held.
FINAL_LINES = {
    "01_quickstart.ipynb": "round trip identical",
    "02_norman_combinations.ipynb": "norman combinations done",
    "03_covariate_transfer.ipynb": "covariate transfer done",
    "04_weak_knockouts.ipynb": "weak knockouts done",
    "05_time_course_mamba.ipynb": "time course done",
    "06_own_embeddings.ipynb": "own embeddings done",
    "07_benchmark_your_model.ipynb": "benchmark done",
    "08_doses.ipynb": "doses done",
}
# Notebooks on real data read these files of ../shared/data; without them the notebook would download the data.
NEEDS_DATA = {
    "02_norman_combinations.ipynb": "norman2019_mcfaline2023_subset.h5ad",
    "03_covariate_transfer.ipynb": "norman2019_mcfaline2023_subset.h5ad",
    "04_weak_knockouts.ipynb": "papalexi2021_thp1_eccite_299g.h5ad",
    "07_benchmark_your_model.ipynb": "norman2019_mcfaline2023_subset.h5ad",
}


def test_tutorials_are_found():
    # Without this, an emptied or moved folder would make the parametrised test pass vacuously.
    assert NOTEBOOKS, f"no notebooks in {TUTORIALS}"
    assert {p.name for p in NOTEBOOKS} >= set(FINAL_LINES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_outputs(path: Path):
    # The documentation renders the committed outputs without executing: they must come from a complete run.
    code_cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert all(c.get("outputs") for c in code_cells[-1:]), "commit notebooks with the outputs of a complete run"
    errors = [o for c in code_cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"committed outputs hold an error: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    images = [o for c in code_cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "no figure (image/png) in the committed outputs"
    expected = FINAL_LINES.get(path.name)
    if expected is not None:
        assert expected in _printed(code_cells[-1]).splitlines(), "the committed run did not reach its last check"
    assert path.stat().st_size < 1_000_000, f"{path.name} is {path.stat().st_size} bytes; lower the figures' dpi"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_tutorial_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if path.name in NEEDS_DATA:
        shared_file(NEEDS_DATA[path.name])  # skips, with the reason, where ../shared/data is absent
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # run from scratch: nothing of the committed outputs can make the test pass
        if cell.cell_type == "code":
            cell.outputs = []
    _use_this_python(tmp_path, monkeypatch)
    # The kernel inherits the environment: one thread per op avoids OpenMP contention on small CPU machines.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("CELLFLOW_TUTORIAL_BUDGET", "small")
    work = tmp_path / "work"
    work.mkdir()
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    expected = FINAL_LINES.get(path.name)
    if expected is not None:
        printed = _printed(code_cells[-1])
        assert expected in printed.splitlines(), f"last cell printed {printed!r}"


def _printed(cell) -> str:
    """What a code cell printed (its stream outputs)."""
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def _use_this_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the kernel named ``KERNEL`` run this interpreter (so the notebook sees this environment's cellflow)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv = KernelSpecManager().get_kernel_spec(KERNEL).argv
    except NoSuchKernel:
        argv = []
    if argv and _same_python(argv[0]):
        return
    # Otherwise install a kernelspec for sys.executable that shadows the others (JUPYTER_PATH comes first).
    kernel_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    kernel_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (cellflow tests)",
        "language": "python",
    }
    (kernel_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    assert KernelSpecManager().get_kernel_spec(KERNEL).argv[0] == sys.executable


def _same_python(executable: str) -> bool:
    """Whether the kernel command ``executable`` runs this interpreter."""
    import shutil

    # jupyter_client starts sys.executable for these bare names (ipykernel's own spec says "python").
    if executable in {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}:
        return True
    found = shutil.which(executable)
    return found is not None and Path(found).resolve() == Path(sys.executable).resolve()
