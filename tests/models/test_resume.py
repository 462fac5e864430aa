"""Training that survives being stopped: resumed from its checkpoint folder, it ends where an uninterrupted run does."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest

JOB = Path(__file__).with_name("resume_job.py")
_spec = importlib.util.spec_from_file_location("resume_job", JOB)
resume_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(resume_job)
run = resume_job.run


class CtrlC(pl.Callback):
    """Press Ctrl-C after ``step`` optimizer steps of the first fit it sees."""

    def __init__(self, step: int) -> None:
        self.step, self.fired = step, False

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step and not self.fired:
            self.fired = True
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def uninterrupted():
    return run()


def test_a_run_stopped_in_the_flow_and_in_reflow_resumes_to_the_same_model(uninterrupted, tmp_path, monkeypatch):
    import cellflow as cf

    real_train = cf.CellFlow.train

    def stop_at(step):
        def train(self, **kwargs):
            return real_train(self, **kwargs, trainer_kwargs={"callbacks": [CtrlC(step)]})

        return train

    monkeypatch.setattr(cf.CellFlow, "train", stop_at(170))  # in the flow: its checkpoint is at step 150
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path)
    assert (tmp_path / "vae" / "vae.json").exists() and (tmp_path / "flow" / "last.ckpt").exists()
    # The finished VAE stage keeps its loss curve (one ELBO per epoch) for the resumed model's history.
    curves = json.loads((tmp_path / "vae" / "vae.json").read_text())["curves"]
    assert len(curves["vae_loss"]) == resume_job.TRAIN["vae_epochs"]
    assert not (tmp_path / "after_flow").exists()
    monkeypatch.setattr(cf.CellFlow, "train", stop_at(40))  # the flow resumes past 40; reflow stops at its step 40
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path)
    assert (tmp_path / "after_flow" / "config.json").exists() and not (tmp_path / "after_reflow").exists()
    monkeypatch.setattr(cf.CellFlow, "train", real_train)
    np.testing.assert_array_equal(run(tmp_path), uninterrupted)
    np.testing.assert_array_equal(run(tmp_path), uninterrupted)  # a finished folder gives the model back


def test_a_folder_of_another_run_is_refused(tmp_path, monkeypatch):
    run(tmp_path)
    monkeypatch.setitem(resume_job.TRAIN, "flow_steps", 300)
    with pytest.raises(ValueError, match=r"holds a training run with other \['options'\]"):
        run(tmp_path)


@pytest.mark.parametrize("wait_for", ["vae/vae.json", "flow/last.ckpt", "after_flow/config.json"])
def test_killed_with_sigkill_and_restarted_it_ends_where_an_uninterrupted_run_does(uninterrupted, tmp_path, wait_for):
    """SIGKILL (no clean-up at all) once a stage has written its file, then the same command again."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, str(JOB), str(tmp_path / "ck"), str(tmp_path / "out.npy")]
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / "ck" / wait_for).exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert (tmp_path / "ck" / wait_for).exists(), "the job ended before it reached the stage"
    assert not (tmp_path / "out.npy").exists()
    subprocess.run(command, env=env, check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), uninterrupted)
