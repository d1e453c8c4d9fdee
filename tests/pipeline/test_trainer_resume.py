"""A Trainer killed with SIGKILL mid-run resumes from its last backup when the pipeline runs again."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

from pipeline.config import load_config
from pipeline.demo_data import generate_landmarks

STEPS, EPOCH = 120, 10


def _run(data, out, cfg_file, log):
    # Output to a file: an unread pipe fills up with TFX's logs and blocks the child.
    return subprocess.Popen(
        [sys.executable, "-c", "from dolg_tfx.cli import main; main()", "run", "--data", str(data),
         "--output", str(out), "--preset", "tiny", "--config", str(cfg_file), "--verbose"],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def test_killed_training_resumes_from_its_last_backup(tmp_path):
    data = tmp_path / "data"
    generate_landmarks(data, n_landmarks=6, views_per_landmark=5, size=64, seed=9)
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps({"train_steps": STEPS, "steps_per_epoch": EPOCH, "augment": False}))
    load_config("tiny", str(cfg_file))  # the file is a valid config
    out = tmp_path / "out"
    backups = str(out / "pipeline" / "_trainer_backup" / "*" / "**" / "checkpoint")

    first = _run(data, out, cfg_file, tmp_path / "first.log")
    deadline = time.time() + 400
    while not glob.glob(backups, recursive=True):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "no backup was written"
        time.sleep(0.2)
    time.sleep(1.0)  # let training move past the backup
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL

    second = _run(data, out, cfg_file, tmp_path / "second.log")
    second.wait(timeout=600)
    log = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, log[-3000:]
    runs = sorted(glob.glob(str(out / "pipeline" / "Trainer" / "model_run" / "*" / "training_progress.json")),
                  key=lambda p: int(p.split(os.sep)[-2]))
    progress = json.loads(open(runs[-1]).read())
    assert 0 < progress["initial_step"] < STEPS, progress
    assert progress["initial_step"] % EPOCH == 0  # a backup boundary
    assert progress["step"] == STEPS
    assert "resumed from a backup" in log
