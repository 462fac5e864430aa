"""The ``cellflow`` command line: exit codes, one-line errors, checks of --out before any work, signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cellflow as cf
from cellflow import cli
from cellflow.cli import main

TRAIN_TINY = ["--vae-epochs", "1", "--flow-steps", "2", "--reflow-rounds", "0", "--latent-dim", "4", "--quiet"]


def _one_error_line(err: str, verb: str) -> str:
    """The single line of stderr, which must be ``cellflow VERB: error: ...``."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"cellflow {verb}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    adata = cf.datasets.simulate_perturbseq(n_cells=300, n_genes=30, n_cell_types=1, seed=0)
    path = tmp_path_factory.mktemp("data") / "screen.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def model_dir(data_file, tmp_path_factory) -> Path:
    """A tiny model trained once and saved (tests copy it before damaging it)."""
    import anndata as ad

    adata = ad.read_h5ad(data_file)
    cf.pp.setup(adata, perturbation_key="perturbation", control="control")
    model = cf.CellFlow(adata, latent_dim=4, backbone_kwargs={"hidden_dim": 16, "n_blocks": 1}, seed=0)
    model.train(vae_epochs=2, flow_steps=5, reflow_rounds=0, progress_bar=False, accelerator="cpu")
    path = tmp_path_factory.mktemp("model") / "model"
    model.save(path)
    return path


@pytest.fixture
def recorded_train(monkeypatch):
    """Replace ``CellFlow.train`` and ``CellFlow.save`` by recorders: no training, nothing written."""
    calls: dict[str, list] = {"train": [], "save": []}

    def train(self, **kwargs):
        calls["train"].append(kwargs)
        return self

    def save(self, path, **kwargs):
        calls["save"].append((path, kwargs))

    monkeypatch.setattr(cf.CellFlow, "train", train)
    monkeypatch.setattr(cf.CellFlow, "save", save)
    return calls


# ---------------------------------------------------------------------- version, help, usage, exit codes
def test_version_and_help_without_torch():
    code = (
        "import sys; from cellflow.cli import main; rc = main(['--version']); "
        "print(rc, sorted(m for m in ('torch', 'anndata', 'h5py', 'lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"cellflow {cf.__version__}", "0 []"]


def test_exit_codes_are_documented(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    codes = {0: "success", 1: "user error", 2: "usage error", 130: "interrupted", 143: "terminated"}
    assert set(cli.EXIT_CODES) == set(codes)
    for code, word in codes.items():
        assert any(line.split()[:1] == [str(code)] and word in line for line in out.splitlines()), (code, out)
        assert f"\n{code}\n" in cli.__doc__
    assert "demo | train | generate | benchmark" in cli.__doc__.splitlines()[0]
    assert main(["generate", "--help"]) == 0 and "143" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["train"]) == 2  # --data and --out are required
    assert "required" in capsys.readouterr().err
    assert main(["train", "--data", "x", "--out", "y", "--coupling", "nope"]) == 2


def test_choices_come_from_the_constants():
    from cellflow import _constants
    from cellflow.evaluation._run import SPLITS
    from cellflow.models._persistence import CONFIG_FILE

    allowed = {
        v for name in dir(_constants) if isinstance(getattr(_constants, name), tuple) for v in getattr(_constants, name)
    }
    parser = cli._parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices
    for name, verb in verbs.items():
        for action in verb._actions:
            if action.choices is not None:
                source = SPLITS if action.dest == "split" else allowed
                assert set(action.choices) <= set(source), (name, action.dest)
    assert cli.SPLITS == SPLITS
    assert cli._paths.MODEL_CONFIG == CONFIG_FILE


# ---------------------------------------------------------------------- signals
def _raise(error: BaseException) -> None:
    raise error


def _run_and_signal(data_file: Path, out: Path, signum: int) -> tuple[int, str]:
    """Start ``cellflow train`` with a long VAE, send ``signum`` once an epoch has run, return (code, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    stdout, stderr = out.parent / "stdout.txt", out.parent / "stderr.txt"
    command = [sys.executable, "-m", "cellflow.cli", "train", "--data", str(data_file), "--out", str(out)]
    command += ["--vae-epochs", "400", "--latent-dim", "4", "--flow-steps", "5", "--reflow-rounds", "0"]
    with stdout.open("w") as out_file, stderr.open("w") as err_file:
        process = subprocess.Popen(
            command,
            stdout=out_file,
            stderr=err_file,
            env=env,
            cwd=out.parent,
            # A shell without job control starts background jobs with SIGINT ignored, which cellflow respects.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 90
            while process.poll() is None and time.monotonic() < deadline:
                if "training on 300 cells" in stdout.read_text():  # printed as training starts
                    time.sleep(1.0)
                    break
                time.sleep(0.2)
            running = process.poll() is None
            process.send_signal(signum)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert running, f"train ended before the signal: {stderr.read_text()}"
    return process.returncode, stderr.read_text()


@pytest.mark.parametrize(
    ("signum", "code", "message"),
    [
        (signal.SIGTERM, 143, "cellflow train: terminated (SIGTERM); stopped"),
        (signal.SIGINT, 130, "cellflow train: interrupted (SIGINT); stopped"),
    ],
)
def test_signal_during_training(data_file, tmp_path, signum, code, message):
    out = tmp_path / "model"
    returncode, err = _run_and_signal(data_file, out, signum)
    assert returncode == code, err
    assert [line for line in err.splitlines() if line.strip()] == [message]
    assert not out.exists()


def test_signals_in_process_and_handlers_restored(data_file, tmp_path, monkeypatch, capsys):
    """SIGTERM and SIGINT while the verb runs, Lightning's SIGTERMException, KeyboardInterrupt; handlers restored."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    class Fallback(Exception):
        pass

    def fallback(signum, frame):  # what the test process does with a signal main() does not handle
        raise Fallback(signum)

    previous = {s: signal.signal(s, fallback) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for action, code in [
            (lambda: os.kill(os.getpid(), signal.SIGTERM), 143),
            (lambda: os.kill(os.getpid(), signal.SIGINT), 130),
            (lambda: _raise(SIGTERMException()), 143),
            (lambda: _raise(KeyboardInterrupt()), 130),
        ]:

            def train(self, action=action, **kwargs):
                action()
                time.sleep(5)  # the signal arrives before this ends
                return self

            monkeypatch.setattr(cf.CellFlow, "train", train)
            out = tmp_path / "model"
            assert main(["train", "--data", str(data_file), "--out", str(out), "--quiet"]) == code
            assert len(capsys.readouterr().err.strip().splitlines()) == 1
            assert not out.exists()
            assert signal.getsignal(signal.SIGTERM) is fallback and signal.getsignal(signal.SIGINT) is fallback
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------------- generate --out
def _generate(model: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--model", str(model), "--conditions", "G0000", "--n-cells", "20", "--out", str(out), *extra]


def test_generate_refuses_an_existing_out_unless_overwrite(model_dir, tmp_path, capsys):
    out = tmp_path / "pred.h5ad"
    out.write_text("precious")
    assert main(_generate(model_dir, out)) == 1
    assert "--overwrite" in _one_error_line(capsys.readouterr().err, "generate")
    assert out.read_text() == "precious"
    assert main(_generate(model_dir, out, "--overwrite")) == 0
    import anndata as ad

    assert ad.read_h5ad(out).n_obs == 20
    assert [p.name for p in tmp_path.iterdir()] == ["pred.h5ad"]  # no partial file left behind


def test_generate_checks_out_before_loading_the_model(model_dir, data_file, tmp_path, monkeypatch, capsys):
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(cf.CellFlow, "load", load)
    weights = next(model_dir.glob("*.safetensors"))
    size = weights.stat().st_size
    (tmp_path / "link").symlink_to(model_dir)
    for out, words in [
        (weights, "would replace the model"),  # even with --overwrite
        (tmp_path / "link" / "config.json", "would replace the model"),
        (model_dir, "would replace the model"),
        (tmp_path, "is a directory"),
        (tmp_path / "missing" / "pred.h5ad", "does not exist"),
        (data_file, "exists; pass --overwrite"),
    ]:
        assert main(_generate(model_dir, out, *([] if out == data_file else ["--overwrite"]))) == 1
        assert words in _one_error_line(capsys.readouterr().err, "generate"), out
    assert weights.stat().st_size == size


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_generate_refuses_an_unwritable_directory(model_dir, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(_generate(model_dir, locked / "pred.h5ad")) == 1
        assert "not writable" in _one_error_line(capsys.readouterr().err, "generate")
    finally:
        locked.chmod(0o700)


def test_generate_with_truncated_weights_is_one_line(model_dir, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(model_dir, damaged)
    weights = next(damaged.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(_generate(damaged, tmp_path / "pred.h5ad")) == 1
    line = _one_error_line(capsys.readouterr().err, "generate")
    assert str(damaged) in line and "cannot load the model" in line
    assert not (tmp_path / "pred.h5ad").exists()
    with pytest.raises(Exception, match="damaged") as raised:  # --debug: the error itself, with its traceback
        main(["--debug", *_generate(damaged, tmp_path / "pred.h5ad")])
    assert str(damaged) in str(raised.value)


def test_safetensors_errors_are_user_errors(model_dir, tmp_path, monkeypatch, capsys):
    """safetensors' own error (not an OSError) on a damaged file is one line, found without importing it early."""
    from safetensors import SafetensorError

    def load(*args, **kwargs):
        raise SafetensorError("Error while deserializing header: incomplete metadata, file not fully covered")

    monkeypatch.setattr(cf.CellFlow, "load", load)
    assert SafetensorError in cli._errors.user_errors()
    assert main(_generate(model_dir, tmp_path / "pred.h5ad")) == 1
    line = _one_error_line(capsys.readouterr().err, "generate")
    assert str(model_dir) in line and "deserializing header" in line and "internal error" not in line


def test_generate_with_a_damaged_config_or_no_model(model_dir, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(model_dir, damaged)
    config = damaged / "config.json"
    config.write_text(config.read_text()[:100])
    assert main(_generate(damaged, tmp_path / "pred.h5ad")) == 1
    assert str(damaged) in _one_error_line(capsys.readouterr().err, "generate")
    meta = json.loads((model_dir / "config.json").read_text())
    config.write_text(json.dumps({**meta, "format_version": -1}))
    assert main(_generate(damaged, tmp_path / "pred.h5ad")) == 1
    assert "version" in _one_error_line(capsys.readouterr().err, "generate")
    assert main(_generate(tmp_path / "nothing", tmp_path / "pred.h5ad")) == 1
    assert "not a directory" in _one_error_line(capsys.readouterr().err, "generate")


# ---------------------------------------------------------------------- train --out, --overwrite, --checkpoint-dir
def test_train_checks_out_before_reading_or_training(
    model_dir, data_file, tmp_path, recorded_train, monkeypatch, capsys
):
    def read_h5ad(*args, **kwargs):
        raise AssertionError("the data was read before --out was checked")

    monkeypatch.setattr("anndata.read_h5ad", read_h5ad)
    base = ["train", "--data", str(data_file), "--quiet"]
    assert main([*base, "--out", str(model_dir)]) == 1
    line = _one_error_line(capsys.readouterr().err, "train")
    assert "already holds a model" in line and "--overwrite" in line and "overwrite=True" not in line
    file = tmp_path / "model.txt"
    file.write_text("not a model")
    assert main([*base, "--out", str(file), "--overwrite"]) == 1
    assert "is a file" in _one_error_line(capsys.readouterr().err, "train")
    assert main([*base, "--out", str(tmp_path / "new"), "--checkpoint-dir", str(file)]) == 1
    assert "--checkpoint-dir" in _one_error_line(capsys.readouterr().err, "train")
    assert recorded_train == {"train": [], "save": []}


def test_train_passes_overwrite_and_checkpoint_dir(model_dir, data_file, tmp_path, recorded_train, capsys):
    base = ["train", "--data", str(data_file), "--quiet"]
    assert main([*base, "--out", str(model_dir), "--overwrite"]) == 0
    assert recorded_train["save"] == [(str(model_dir), {"overwrite": True})]
    assert "checkpoint_dir" not in recorded_train["train"][-1]  # not given: not passed
    checkpoints = tmp_path / "checkpoints"
    assert main([*base, "--out", str(tmp_path / "new"), "--checkpoint-dir", str(checkpoints)]) == 0
    assert recorded_train["train"][-1]["checkpoint_dir"] == str(checkpoints)
    assert recorded_train["save"][-1] == (str(tmp_path / "new"), {"overwrite": False})


def test_train_passes_the_preset(data_file, tmp_path, recorded_train, monkeypatch):
    built = []
    real_init = cf.CellFlow.__init__

    def init(self, adata, **kwargs):
        built.append(kwargs)
        real_init(self, adata, **kwargs)

    monkeypatch.setattr(cf.CellFlow, "__init__", init)
    base = ["train", "--data", str(data_file), "--quiet", "--out"]
    assert main([*base, str(tmp_path / "a"), "--preset", "long"]) == 0
    assert built[-1]["preset"] == "long"
    assert main([*base, str(tmp_path / "b")]) == 0
    assert "preset" not in built[-1]  # not given: the library's default
    assert main([*base, str(tmp_path / "c"), "--preset", "quick"]) == 2  # refused by argparse, with the choices


def test_train_end_to_end_and_overwrite(data_file, tmp_path, capsys):
    out = tmp_path / "model"
    base = ["train", "--data", str(data_file), "--out", str(out), *TRAIN_TINY]
    assert main(base) == 0
    assert (out / "config.json").exists()
    assert main(base) == 1  # the check before training refuses
    capsys.readouterr()


# ---------------------------------------------------------------------- bad input: one line, exit 1; --debug
def test_bad_data_files_are_one_line(data_file, tmp_path, capsys):
    import anndata as ad

    text = tmp_path / "text.h5ad"
    text.write_text("cell,gene\n1,2\n")
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    empty = tmp_path / "empty.h5ad"
    ad.read_h5ad(data_file)[:0].copy().write_h5ad(empty)
    cases = [
        (text, "not HDF5"),
        (truncated, "cannot read"),
        (empty, "0 cells"),
        (tmp_path, "is a directory"),
        (tmp_path / "missing.h5ad", "no such file"),
    ]
    for path, words in cases:
        assert main(["train", "--data", str(path), "--out", str(tmp_path / "model"), "--quiet"]) == 1
        line = _one_error_line(capsys.readouterr().err, "train")
        assert words in line and str(path) in line, line
    assert main(["benchmark", "--data", str(text), "--split", "singles", "--out", str(tmp_path / "b")]) == 1
    assert "not HDF5" in _one_error_line(capsys.readouterr().err, "benchmark")
    assert not (tmp_path / "model").exists()


def test_config_type_error_and_internal_error(data_file, tmp_path, monkeypatch, capsys):
    error = TypeError("flow_kwargs got unknown option(s) ['x']; the options are ['a', 'b'].")

    def train(self, **kwargs):
        raise error

    monkeypatch.setattr(cf.CellFlow, "train", train)
    args = ["train", "--data", str(data_file), "--out", str(tmp_path / "model"), "--quiet"]
    assert main(args) == 1
    assert _one_error_line(capsys.readouterr().err, "train").endswith(str(error))
    error = RuntimeError("a bug\nover two lines")
    assert main(args) == 1
    line = _one_error_line(capsys.readouterr().err, "train")
    assert "internal error" in line and "RuntimeError: a bug over two lines" in line and "--debug" in line
    with pytest.raises(RuntimeError, match="a bug"):
        main(["--debug", *args])
    with pytest.raises(RuntimeError, match="a bug"):
        main([*args, "--debug"])  # also after the verb


def test_debug_reraises_user_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "train", "--data", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "m")])
