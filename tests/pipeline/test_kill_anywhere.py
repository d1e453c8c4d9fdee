"""Kill anywhere: `dolg-tfx run` SIGKILLed inside each component, started again with the same
command, ends BLESSED with exactly one new complete model version, reusing what had finished.

One chain shares the data, the output folder and every finished component (a full run per
component would cost five pipelines): run 1 is killed during ImageExampleGen, run 2 (the same
command) during Transform, run 3 during the Trainer, run 4 during the Evaluator, run 5 during
the Pusher, and run 6 must finish. The Trainer is killed after its first epoch-end backup, so
run 4 also shows a killed Trainer resuming from that backup rather than from step 0. Each test
below is one link and proves, from ML Metadata, that its component was executing when the kill
landed and that the components an earlier run had finished were reused from the cache; asking
for a later link runs the earlier ones first.

Kill points: a component is "executing" once ML Metadata records its execution as RUNNING in
the current run (polled read-only); the Pusher runs too briefly for that, so it is killed the
moment its version folder appears in the serving folder, i.e. in the middle of the copy. The
Trainer is killed once it is RUNNING and has written a backup.

Whether that kill lands inside the Pusher's copy or just after it is luck, so the state a cut
copy leaves is also built for certain: copies of the real model with no or a truncated
``saved_model.pb`` (plant_half_pushes), planted before the final run (whose start-up must
remove them) and beside the final pushed version (which readers must resolve instead).
"""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from components.retrieval import model_versions
from conftest import load_fixture
from dolg_tfx.cli import main
from pipeline import local_runner
from pipeline.demo_data import generate_landmarks

ram_fs = load_fixture("ram_fs")

CHAIN = ["ImageExampleGen", "Transform", "Trainer", "Evaluator", "Pusher"]
INGESTION = ["ImageExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomalyGate"]
# Generous safety bounds, not timing claims: a run that hangs must fail, not block CI.
START_TIMEOUT_S, RUN_TIMEOUT_S = 600, 900
# The tiny preset with backups every 10 steps and 30 steps after the first: time to see the
# backup and kill before training ends (BackupAndRestore deletes its backup when it does).
STEPS, EPOCH = 40, 10


def plant_half_pushes(model_dir, base, first_version):
    """Two version folders under ``base`` as a Pusher killed in the middle of its copy leaves
    them, made from the real SavedModel folder ``model_dir`` (TFX's Pusher copies it file by
    file): ``first_version`` has every file but ``saved_model.pb`` (the copy stopped before
    it), ``first_version + 1`` has them all with ``saved_model.pb`` cut to half its bytes (the
    copy stopped inside it). Returns the two folders, in that order."""
    from components.retrieval.model_versions import SAVED_MODEL_FILE

    missing, truncated = (os.path.join(base, str(first_version + i)) for i in (0, 1))
    for folder in (missing, truncated):
        shutil.copytree(model_dir, folder)
    os.remove(os.path.join(missing, SAVED_MODEL_FILE))
    pb = os.path.join(truncated, SAVED_MODEL_FILE)
    with open(pb, "rb") as f:
        data = f.read()
    with open(pb, "wb") as f:
        f.write(data[:len(data) // 2])
    assert os.listdir(os.path.join(missing, "variables")) and os.path.getsize(pb) > 0  # half there, not empty
    return missing, truncated


class Chain:
    """The shared output folder and what each run of the chain left in ML Metadata."""

    def __init__(self, root):
        self.root = root
        self.data, self.out = root / "data", root / "out"
        generate_landmarks(self.data, n_landmarks=6, views_per_landmark=5, size=64, seed=11)
        self.config = root / "chain.json"
        self.config.write_text(json.dumps({"train_steps": STEPS, "steps_per_epoch": EPOCH}))
        self.backups = str(self.out / "pipeline" / "_trainer_backup" / "*" / "**" / "checkpoint")
        self.layout = local_runner.Layout(str(self.out))
        self.killed = {}  # component -> {component: state} of the run killed during it
        self.logs = {}
        self.cut_push = None  # (version folder the killed push was writing, complete then?)
        self.planted = ()  # half-pushed version folders put in before the final run
        self.final = None

    def _start(self, tag):
        log = self.root / f"{tag}.log"
        self.logs[tag] = log
        # The same command every time; output to a file: an unread pipe would block the child.
        return subprocess.Popen(
            [sys.executable, "-c", "from dolg_tfx.cli import main; main()", "run", "--data", str(self.data),
             "--output", str(self.out), "--preset", "tiny", "--config", str(self.config),
             "--verbose"],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def _runs(self):
        try:
            store = local_runner._store(self.layout)
            return [c.id for c in store.get_contexts_by_type("pipeline_run")]
        except Exception:  # no database yet, or the writer holds it this instant
            return []

    def _running(self, component, known_runs):
        """True once the latest run (one not in known_runs) has `component` RUNNING."""
        try:
            _, run, executions = local_runner.latest_run_executions(self.layout)
        except Exception:  # no run yet, or the writer holds the database this instant
            return False
        return run.id not in known_runs and component in executions and \
            local_runner._state(executions[component]) == "RUNNING"

    def _new_version_dir(self, before):
        try:
            return set(os.listdir(self.layout.serving_model_dir)) - before
        except FileNotFoundError:
            return set()

    def kill_during(self, component):
        """Runs the chain up to `component` and returns the killed run's component states."""
        for earlier in CHAIN[:CHAIN.index(component)]:
            if earlier not in self.killed:
                self.kill_during(earlier)
        if component in self.killed:
            return self.killed[component]
        known_runs = set(self._runs())
        versions_before = self._new_version_dir(set())
        proc = self._start(f"killed-in-{component}")
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                assert proc.poll() is None, f"run ended before {component} was killed:\n" + \
                    self.logs[f"killed-in-{component}"].read_text()[-3000:]
                assert time.monotonic() < deadline, f"{component} never started"
                if component == "Pusher":
                    if self._new_version_dir(versions_before):
                        break
                    time.sleep(0.005)  # the copy of a small model takes milliseconds
                else:
                    if self._running(component, known_runs) and (
                            component != "Trainer" or glob.glob(self.backups, recursive=True)):
                        break
                    time.sleep(0.2)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        if component == "Pusher":
            [name] = self._new_version_dir(versions_before)
            folder = os.path.join(self.layout.serving_model_dir, name)
            self.cut_push = (folder, model_versions.is_complete_version(folder))
        _, _, executions = local_runner.latest_run_executions(self.layout)
        self.killed[component] = {k: local_runner._state(v) for k, v in executions.items()}
        return self.killed[component]

    def finish(self):
        """The last rerun, after a kill in every component: (summary, versions before, after)."""
        if self.final is None:
            self.kill_during(CHAIN[-1])
            # Whether run 5's kill cut its copy short is luck: two certainly half-copied
            # versions, above any version a push will take (Pusher: int(time.time())), made
            # from the model the Pusher copies, the Trainer's export (cached in run 5).
            store, _, executions = local_runner.latest_run_executions(self.layout)
            [model] = local_runner._outputs(store, executions["Trainer"], "Model")
            self.planted = plant_half_pushes(os.path.join(model.uri, "Format-Serving"),
                                             self.layout.serving_model_dir, int(time.time()) + 10**6)
            before = model_versions.version_dirs(self.layout.serving_model_dir)
            proc = self._start("final")
            proc.wait(timeout=RUN_TIMEOUT_S)
            assert proc.returncode == 0, self.logs["final"].read_text()[-3000:]
            self.final = (local_runner.summarise(self.layout), before,
                          model_versions.version_dirs(self.layout.serving_model_dir))
        return self.final


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return Chain(tmp_path_factory.mktemp("kill"))


def test_kill_during_image_example_gen(chain):
    states = chain.kill_during("ImageExampleGen")
    assert states["ImageExampleGen"] == "RUNNING", states
    assert "Transform" not in states


def test_kill_during_transform_after_ingestion_reran(chain):
    states = chain.kill_during("Transform")
    assert states["Transform"] == "RUNNING", states
    # ImageExampleGen was killed last time, so this run executed it to the end.
    assert states["ImageExampleGen"] == "COMPLETE", states
    # The killed run's lock did not stop this one: it was taken over.
    assert "ended without releasing its lock; taking over" in chain.logs["killed-in-Transform"].read_text()


def test_kill_during_trainer_reuses_ingestion_and_transform(chain):
    states = chain.kill_during("Trainer")
    assert states["Trainer"] == "RUNNING", states
    assert all(states[c] == "CACHED" for c in INGESTION), states
    assert states["Transform"] == "COMPLETE", states  # killed last time: executed again


def test_kill_during_evaluator_reuses_transform(chain):
    states = chain.kill_during("Evaluator")
    assert states["Evaluator"] == "RUNNING", states
    assert states["Transform"] == "CACHED" and states["Trainer"] == "COMPLETE", states


def test_killed_trainer_resumed_from_its_last_backup(chain):
    """Run 3 was killed after the Trainer's first backup; run 4's Trainer went on from a backup
    boundary, not from step 0, and still trained exactly STEPS steps."""
    from pipeline.trainer import PROGRESS_FILE

    chain.kill_during("Evaluator")
    runs = sorted(chain.out.glob(f"pipeline/Trainer/model_run/*/{PROGRESS_FILE}"), key=lambda p: int(p.parent.name))
    progress = json.loads(runs[-1].read_text())
    assert 0 < progress["initial_step"] < STEPS and progress["initial_step"] % EPOCH == 0, progress
    assert progress["step"] == STEPS, progress
    assert "resumed from a backup" in chain.logs["killed-in-Evaluator"].read_text(errors="replace")


def test_kill_during_pusher_reuses_the_trainer(chain):
    states = chain.kill_during("Pusher")
    assert states["Pusher"] == "RUNNING", states
    assert states["Trainer"] == "CACHED" and states["Evaluator"] == "COMPLETE", states


def test_rerun_after_the_kills_is_blessed_with_exactly_one_new_complete_version(chain):
    """Mutation that fails it: the ``remove_incomplete_versions`` loop dropped from
    ``local_runner.run`` (the two half-pushed folders planted before this run stay)."""
    summary, before, after = chain.finish()
    assert summary["blessed"] is True
    states = summary["components"]
    # The Evaluator runs again by design: run 5's blessing made this model the latest blessed
    # one, so the Resolver now hands it in as the baseline, a changed input.
    assert states["Evaluator"] == "COMPLETE" and states["Pusher"] == "COMPLETE", states
    assert all(states[c] == "CACHED" for c in INGESTION + ["Transform", "Trainer"]), states
    # Only complete versions are left: the run's start-up removed the two half-pushed folders
    # planted before it (certainly), and the killed push's folder if the kill cut its copy
    # short; if that copy had just finished, it stays, complete.
    assert after and all(model_versions.is_complete_version(v) for v in after), after
    log = chain.logs["final"].read_text()
    for folder in chain.planted:
        assert folder in before and folder not in after and not os.path.exists(folder), (folder, after)
        assert f"Removed {folder}: a model version left incomplete by an interrupted push" in log, folder
    folder, was_complete = chain.cut_push
    if not was_complete:
        assert folder not in after and not os.path.exists(folder)
        assert f"Removed {folder}" in chain.logs["final"].read_text()
    new = [v for v in after if v not in before]
    assert len(new) == 1 and os.path.samefile(new[0], summary["pushed_to"]), (before, after, summary)
    assert os.path.isfile(os.path.join(summary["pushed_to"], "saved_model.pb"))


def test_readers_never_take_a_half_pushed_version(chain, tmp_path):
    """The chain's real pushed version V beside two copies of it that a Pusher killed mid-copy
    would leave, numbered above it (V+1: no saved_model.pb, V+2: saved_model.pb cut in half):
    they are incomplete, a serving folder resolves to V, a reader pointed at a half-pushed
    folder itself refuses it, and the clean-up removes exactly those two.

    Mutation that fails it: ``is_complete_version`` reduced to ``tf.io.gfile.exists(path)``
    (the truncated V+2 then counts as complete)."""
    from components.retrieval import serving_contract

    summary, _, _ = chain.finish()
    pushed = summary["pushed_to"]
    version = int(os.path.basename(pushed))
    base = str(tmp_path / "serving")
    good = shutil.copytree(pushed, os.path.join(base, str(version)))
    missing, truncated = plant_half_pushes(pushed, base, version + 1)
    assert model_versions.is_complete_version(good)
    for folder in (missing, truncated):
        assert not model_versions.is_complete_version(folder), folder
        with pytest.raises(FileNotFoundError, match="no complete saved_model.pb"):
            serving_contract.resolve_model_dir(folder)
    assert model_versions.version_dirs(base) == [good, missing, truncated]
    assert model_versions.complete_versions(base) == [good]
    assert os.path.samefile(serving_contract.resolve_model_dir(base), good)
    assert model_versions.remove_incomplete_versions(base) == [missing, truncated]
    assert model_versions.version_dirs(base) == [good] and model_versions.is_complete_version(good)


def test_the_verbose_console_carries_the_whole_log(chain):
    """Every run of the chain is started with --verbose (the quiet default is checked by
    tests/pipeline/test_pipeline_e2e.py): the final run's terminal has every line of the log file it
    names, third-party notices included, as well as the console's own lines."""
    chain.finish()
    console = chain.logs["final"].read_text(errors="replace")
    [named] = re.findall(r"^Full log: (\S+\.log)$", console, flags=re.M)
    log_lines = [line for line in open(named, errors="replace").read().splitlines()
                 if line.strip() and not line.startswith("[console]")]
    assert len(log_lines) > 20 and "Component Trainer is running." in console and "WARNING" in console
    missing = [line for line in log_lines if line not in console]
    assert not missing, missing[:5]
    assert "  Trainer done in " in console


def test_the_runs_outputs_read_the_same_from_an_object_store(chain, tmp_path):
    """The run's real Evaluator output, ingestion report and pushed model, copied to ram://
    (the gs:// code path), give the summary's numbers and the same `explain` overlay."""
    summary, _, _ = chain.finish()
    store, _, executions = local_runner.latest_run_executions(chain.layout)
    [evaluation] = local_runner._outputs(store, executions["Evaluator"], "ModelEvaluation")
    [report] = local_runner._outputs(store, executions["ImageExampleGen"], "dolg_tfx.IngestionReport")
    ram = ram_fs.fresh_prefix("kill")
    try:
        ram_fs.copy_tree(evaluation.uri, f"{ram}/evaluation")
        ram_fs.copy_tree(report.uri, f"{ram}/report")
        ram_fs.copy_tree(chain.layout.serving_model_dir, f"{ram}/serving")
        assert local_runner.evaluation_metrics(f"{ram}/evaluation") == summary["metrics"]
        assert local_runner.read_json_artifact_file(f"{ram}/report", "summary.json") == summary["ingestion"]
        image = sorted(chain.data.glob("*/*.jpg"))[0]
        ram_fs.copy_tree(image.parent, f"{ram}/query")
        runner = CliRunner()
        local = runner.invoke(main, ["explain", str(image), "--model", chain.layout.serving_model_dir,
                                     "-o", str(tmp_path / "local.png")])
        remote = runner.invoke(main, ["explain", f"{ram}/query/{image.name}", "--model", f"{ram}/serving",
                                      "-o", str(tmp_path / "ram.png")])
        assert local.exit_code == 0 and remote.exit_code == 0, (local.output, remote.output)
        with Image.open(tmp_path / "local.png") as a, Image.open(tmp_path / "ram.png") as b:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        missing = runner.invoke(main, ["explain", f"{ram}/query/none.jpg", "--model", f"{ram}/serving",
                                       "-o", str(tmp_path / "x.png")])
        assert missing.exit_code != 0 and f"{ram}/query/none.jpg" in missing.output
    finally:
        ram_fs.remove(ram)
