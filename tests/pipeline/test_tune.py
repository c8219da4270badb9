"""`tune`: trials as MLflow child runs of one parent, a best config that trains, a space file checked before any
trial, failed and pruned trials recorded as such, and two worker processes sharing one sqlite study."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from pipeline.config.schema import load_config
from pipeline.engine.data import ensure_shapes
from pipeline.jobs.cli import main
from pipeline.jobs.tune import Objective, plan, run_tune
from pipeline.tuning.search import TuneOptions
from pipeline.tuning.study_runs import open_parent
from support import write_tiny_config

REPO = Path(__file__).resolve().parents[2]


def write_config(folder: Path, epochs: int = 1) -> Path:
    return write_tiny_config(folder, "tiny", "tune", {"epochs": epochs, "device": "cpu", "monitor": "val/cls/accuracy"})


def write_space(folder: Path, text: str) -> Path:
    path = folder / "space.yaml"
    path.write_text(text)
    return path


def children(client: MlflowClient, parent: str) -> list:
    experiment = client.get_experiment_by_name("tune").experiment_id
    return client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'")


def test_trials_are_child_runs_of_one_parent_and_the_best_config_is_the_best_trials(tmp_path):
    config = write_config(tmp_path)
    space = write_space(tmp_path, "train.optimizer.lr: {float: [1e-4, 1.0e-1], log: true}\n"
                                  "train.optimizer.name: {choice: [adamw, sgd]}\n")
    # The epoch's train loss: a metric every trial gets a different value of
    result = run_tune(TuneOptions(config, space, trials=4, sampler="random", pruner="none",
                                  metric="epoch/train/loss", direction="min", seed=0))
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = children(client, result.parent_run_id)
    assert sorted(int(run.data.tags["pipeline.tune.trial"]) for run in runs) == [0, 1, 2, 3]
    by_trial = {int(run.data.tags["pipeline.tune.trial"]): run for run in runs}
    for trial in trials:
        run = by_trial[trial.number]
        assert run.info.status == "FINISHED" and run.data.tags["pipeline.tune.state"] == "COMPLETE"
        assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert float(run.data.params["train.optimizer.lr"]) == pytest.approx(trial.params["train.optimizer.lr"])
        assert run.data.params["train.optimizer.name"] == trial.params["train.optimizer.name"]
        # one epoch: the trial's value is its run's logged train loss
        assert run.data.metrics["epoch/train/loss"] == pytest.approx(trial.value)
    best = min(trials, key=lambda t: t.value)
    assert result.best.number == best.number
    loaded = load_config(result.best_config)
    assert loaded.train.optimizer.lr == pytest.approx(best.params["train.optimizer.lr"])
    assert loaded.train.optimizer.name == best.params["train.optimizer.name"]
    assert result.best_config == tmp_path / "runs/tiny" / f"tune-{result.study.study_name}" / "best.yaml"
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["pipeline.tune.best_trial"] == str(best.number)
    assert parent.data.metrics["tune/best_value"] == pytest.approx(best.value)
    assert {a.path for a in client.list_artifacts(result.parent_run_id)} == {"best.yaml", "trials.csv"}


@pytest.mark.parametrize("space, sampler, named", [
    ("train.optimizer.lrr: {float: [1.0e-4, 1.0e-2]}\n", "tpe",
     "space.yaml: train.optimizer.lrr: not a key of"),
    ("train.optimizer.lr: {float: [1.0e-2, 1.0e-4]}\n", "tpe",
     "space.yaml: train.optimizer.lr: float: expected low < high"),
    ("train.optimizer.lr: {uniform: [1.0e-4, 1.0e-2]}\n", "tpe",
     "space.yaml: train.optimizer.lr: expected a mapping with one of float, int, choice"),
    ("train.optimizer.name: {choice: [adamw, sgdd]}\n", "tpe",
     "space.yaml: train.optimizer.name: the value 'sgdd' does not make a valid config"),
    ("train.optimizer.lr: {float: [1.0e-4, 1.0e-2], log: true}\n", "grid",
     "space.yaml: train.optimizer.lr: the grid sampler needs a finite list of values"),
])
def test_a_bad_space_file_fails_before_any_trial_naming_the_key(tmp_path, capsys, space, sampler, named):
    config = write_config(tmp_path)
    status = main(["tune", str(config), "--space", str(write_space(tmp_path, space)), "--trials", "2",
                   "--sampler", sampler])
    err = capsys.readouterr().err
    assert status == 2 and named in err and "Traceback" not in err, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists() \
        and not (tmp_path / "data").exists()


def test_a_failing_trial_is_recorded_failed_and_the_search_goes_on(tmp_path, capsys):
    config = write_config(tmp_path)
    # 2 batches per epoch: accumulating 4 of them is no step at all, which the trainer refuses
    space = write_space(tmp_path, "train.accumulate: {choice: [1, 4]}\n")
    status = main(["tune", str(config), "--space", str(space), "--trials", "2", "--sampler", "grid",
                   "--pruner", "none", "--study-name", "s", "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"])
    assert status == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = {t.params["train.accumulate"]: t.state for t in study.trials}
    assert states == {1: TrialState.COMPLETE, 4: TrialState.FAIL}
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = {run.data.tags["pipeline.tune.sampled"]: run
            for run in children(client, study.user_attrs["mlflow_parent_run_id"])}
    failed = runs['{"train.accumulate": 4}']
    assert failed.info.status == "FAILED" and failed.data.tags["pipeline.tune.state"] == "FAIL"
    assert "train.accumulate" in failed.data.tags["pipeline.tune.error"]
    assert runs['{"train.accumulate": 1}'].info.status == "FINISHED"
    # every trial failing is a failed search
    only_failing = write_space(tmp_path, "train.accumulate: {choice: [4]}\n")
    assert main(["tune", str(config), "--space", str(only_failing), "--trials", "1", "--pruner", "none"]) == 1


def test_a_pruned_trial_ends_pruned_with_its_run_killed_and_its_checkpoint_kept(tmp_path):
    config = write_config(tmp_path, epochs=2)
    space = write_space(tmp_path, "train.optimizer.lr: {float: [1.0e-3, 1.0e-2]}\n")
    options = TuneOptions(config, space, trials=2, pruner="median")
    search = plan(options, load_config(config))
    study = optuna.create_study(study_name=search.study_name, direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    # An earlier trial whose accuracy no trial can reach: the median pruner stops the next at its first epoch
    study.add_trial(optuna.trial.create_trial(
        params={"train.optimizer.lr": 0.005}, distributions={"train.optimizer.lr": FloatDistribution(1e-3, 1e-2)},
        value=2.0, intermediate_values={1: 2.0, 2: 2.0}))
    runs = open_parent(study, True, load_config(config), options, search)
    study.optimize(Objective(search, runs), n_trials=1)
    trial = study.trials[1]
    assert trial.state == TrialState.PRUNED and trial.intermediate_values.keys() == {1}
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["pipeline.tune.state"] == "PRUNED"
    assert run.data.tags["pipeline.tune.pruned_after_epoch"] == "1"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/cls/accuracy")] == [2]  # 1 epoch
    assert (Path(trial.user_attrs["run_folder"]) / "last.pt").is_file()


def test_two_worker_processes_share_one_sqlite_study_and_run_its_trials_once(tmp_path):
    config = write_config(tmp_path)
    ensure_shapes(load_config(config).data)      # the data exists before the workers start
    space = write_space(tmp_path, "train.optimizer.lr: {choice: [0.001, 0.01]}\n"
                                  "train.optimizer.name: {choice: [adamw, sgd]}\n")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    command = [sys.executable, "-m", "pipeline", "tune", str(config), "--space", str(space), "--trials", "4",
               "--sampler", "grid", "--pruner", "none", "--storage", storage, "--study-name", "s"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=240) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="s", storage=storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert sorted(int(run.data.tags["pipeline.tune.trial"]) for run in children(client, parent)) == [0, 1, 2, 3]
    assert client.get_run(parent).info.status == "FINISHED"
    assert len(client.search_runs([client.get_experiment_by_name("tune").experiment_id],
                                  filter_string="tags.`mlflow.source.name` = 'python -m pipeline tune'")) == 5
    assert load_config(tmp_path / "runs/tiny/tune-s/best.yaml").train.optimizer.name in ("adamw", "sgd")
