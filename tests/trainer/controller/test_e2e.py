"""A few steps of the real loop with every component a real process (verifier and rollout servers on
127.0.0.1, learner ranks as Ray actors over gloo), plus the fault tests: verifier killed, rollout replica
killed and restarted, replicas joining and leaving, SIGTERM then --resume, unwritable checkpoints. A real
Prometheus scrapes the reference run, and every dashboard panel and alert rule the chart ships is queried on it.

The reference run uses the one-step-off-policy schedule: its first step is on-policy (the learner and the
rollout engine agree on log-probs to rounding), the later ones are generated one version behind, and its
checkpoint must carry the in-flight rollout; one reference then serves both schedules' claims. (Each run
costs about a minute of both cores here: the on-policy loop runs in the fault test, the main job's test and
the multi-host and real-pod tests.)"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from forkrl.trainer.controller.recorder import read_eval_records, read_records, read_step_records
from forkrl.trainer.controller.setup import PreflightError, preflight_checkpoint_dir
from forkrl.trainer.spec import load_spec
from tests.browser import check_page
from tests.cluster.binaries import ClusterBinaries
from tests.monitoring.chart import Chart
from tests.monitoring.live_prometheus import LivePrometheus, find_prometheus
from tests.monitoring.live_queries import DASHBOARD_DATA_ENV, alert_queries, panel_queries, problems, save_results

SMOKE = Path(__file__).parent / "smoke.yaml"
STEPS = 3
OFF_POLICY = {"mode": "one_step_off_policy"}


# Runs whose report and TensorBoard files no test reads leave them out (matplotlib's ten plots alone are ~3
# CPU-seconds of the controller); the reference run writes both.
NO_REPORT = {"report": False, "tensorboard": False}


def write_spec(directory: Path, **changes: dict) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    data["schedule"]["steps"] = STEPS
    for key, value in changes.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def forkrl_train(spec: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "forkrl.trainer.cli", "train", str(spec), "--quiet", *extra],
                            cwd=spec.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def communicate_lines(process: subprocess.Popen, timeout_s: float,
                      on_line: Callable[[str], object] | None = None) -> str:
    """`process.communicate(timeout=timeout_s)`'s output, each line handed to `on_line` as it comes."""
    lines: list[str] = []

    def pump() -> None:
        for line in process.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    finally:
        reader.join(timeout=30)
    return "".join(lines)


@pytest.fixture(scope="module")
def live_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePrometheus | None]:
    """A real Prometheus, started before the reference run, that scrapes each of its metrics endpoints every
    second as the run logs them (controller, rollout replica, verifier). None where Debian's `prometheus` is
    not installed: then only the test that queries it is skipped."""
    binary = find_prometheus()
    if binary is None:
        yield None
        return
    prometheus = LivePrometheus.start(binary, tmp_path_factory.mktemp("prometheus"))
    try:
        yield prometheus
        print(f"live prometheus: {prometheus.cpu_seconds():.2f} CPU-s")  # what it adds (shown with -s)
    finally:
        prometheus.stop()


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, live_prometheus: LivePrometheus | None) -> Path:
    """An uninterrupted 3-step off-policy run, scraped by `live_prometheus`; returns its run directory."""
    spec = write_spec(tmp_path_factory.mktemp("reference"), schedule=OFF_POLICY, checkpoint={"export_interval": 1})
    process = forkrl_train(spec)
    output = communicate_lines(process, 600, live_prometheus.add_targets_from if live_prometheus else None)
    if live_prometheus is not None:
        live_prometheus.finished_at = time.time()
    assert process.returncode == 0, output
    return spec.parent / "runs" / "smoke"


def test_rewards_advantages_masks_and_metrics_agree(reference_run: Path) -> None:
    records = read_step_records(reference_run / "metrics.jsonl")
    assert [r.step for r in records] == [1, 2, 3]
    for r in records:
        assert r.trained is not None and r.learner is not None and r.entropy is not None
        assert r.generated.samples == r.trained.samples == 16  # 4 prompts x 4 samples, no dynamic sampling
        assert r.weight_version == r.step
        # Step 1 is generated with the weights the learner holds: same weights, same math, so the learner's
        # log-probs of the sampled tokens equal the rollout engine's. Later steps were generated one version
        # behind (while the learner trained the step before), and the mismatch shows it.
        assert r.learner.mismatch is not None
        if r.step == 1:
            assert r.staleness.lag_max == 0
            assert abs(r.learner.mismatch.k1) < 1e-4 and r.learner.mismatch.k3 < 1e-6
        else:
            assert r.staleness.lag_per_sample == [1] * 16
            assert r.learner.mismatch.k3 > 1e-5, r.learner.mismatch
        # Rewards are {1, 0}: their mean is the accuracy; shaping only lowers it.
        assert r.trained.reward_mean == pytest.approx(r.trained.accuracy)
        assert r.trained.shaped_reward_mean <= r.trained.reward_mean + 1e-12
        # rho = 0.5 per micro-batch: k = ceil(0.5 N) of N tokens -> just above one half.
        forking = r.learner.forking
        assert forking is not None and 0.5 <= forking.selected_frac <= 0.5 + 1 / 8
        assert r.learner.pg_tokens / r.learner.response_tokens == pytest.approx(forking.selected_frac)
        # Each micro-batch's threshold is its median entropy: inside the step's entropy range.
        assert r.entropy.p10 <= forking.threshold_min <= forking.threshold <= forking.threshold_max <= r.entropy.p99
        assert r.generated.response_length_max <= 12
        # Step 1 generates its own samples, then trains and syncs. Off-policy, a later step's samples were
        # generated during the step before (so its rollout need not fit in its own wall time); its update
        # and sync do.
        own_work = r.time.update + r.time.sync + (r.time.rollout if r.step == 1 else 0.0)
        assert r.time.step >= own_work, r.time
    # Each step but the last starts the next step's rollout before its update and waits for it to finish.
    for current, following in itertools.pairwise(records):
        assert current.time.step >= following.time.rollout, (current.time, following.time)
    evals = read_eval_records(reference_run / "metrics.jsonl")
    assert [(e.phase, e.dataset, e.step) for e in evals] == [("before_rl", "heldout", 0), ("after_rl", "heldout", 3)]
    summary = json.loads((reference_run / "summary.json").read_text())
    assert set(summary["comparison"]["heldout"]) >= {"before", "after", "difference", "ci95_low", "ci95_high"}
    assert re.fullmatch(r"http://127\.0\.0\.1:[1-9]\d*/metrics", summary["metrics_url"])
    final = AutoModelForCausalLM.from_pretrained(reference_run / "final_model")
    weights = _final_weights(reference_run)
    assert weights and all(torch.equal(final.state_dict()[name], w) for name, w in weights.items())
    # checkpoint.export_interval: 1 -> a standalone model after each step but the last (that is final_model),
    # each loadable on its own and each a different point of training.
    exported = sorted(p.name for p in (reference_run / "models").iterdir())
    assert exported == [f"step_{s:08d}" for s in range(1, STEPS)]
    snapshots = [AutoModelForCausalLM.from_pretrained(reference_run / "models" / n).state_dict() for n in exported]
    for earlier, later in itertools.pairwise([*snapshots, final.state_dict()]):
        assert earlier.keys() == later.keys()
        assert any(not torch.equal(earlier[name], later[name]) for name in earlier)
    report = (reference_run / "report.html").read_text()
    for png in ("reward.png", "heldout.png", "entropy.png", "length.png", "clip.png", "selected.png", "lr.png",
                "time.png", "entropy_hist.png"):
        assert png in report and (reference_run / png).stat().st_size > 1000
    check = check_page(reference_run / "report.html")
    assert check.problems() == [] and len(check.images) >= 9, check.problems()
    assert json.loads(json.dumps(load_spec(reference_run.parent.parent / "spec.yaml").model_dump()))


def test_every_panel_and_alert_queries_series_the_run_exported(reference_run: Path,
                                                               live_prometheus: LivePrometheus | None,
                                                               k8s_binaries: ClusterBinaries, tmp_path: Path) -> None:
    """Each expression of the shipped dashboards and alert rules returns data from a real Prometheus that
    scraped the reference run, unless live_queries.NO_LOCAL_DATA says why it cannot (see there)."""
    if live_prometheus is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            pytest.fail("prometheus is missing but installable here: run `bash scripts/setup.sh`")
        pytest.skip("prometheus is missing and scripts/setup.sh cannot install it (needs root and apt-get)")
    start, end = live_prometheus.first_target_at, live_prometheus.finished_at
    assert start is not None and end is not None
    # The controller, the rollout replica and the verifier each logged their endpoint, and each was scraped.
    assert len(live_prometheus.targets) == 3, live_prometheus.targets
    up = live_prometheus.query_range("up == 1", start, end)
    assert {series.labels["instance"] for series in up} == set(live_prometheus.targets), live_prometheus.log_tail()
    rules = Chart(k8s_binaries.path("helm"), tmp_path).alert_rules()
    queries = [*panel_queries("smoke"), *alert_queries(rules)]
    results = {query.id: live_prometheus.query_range(query.query, start, end) for query in queries}
    if os.environ.get(DASHBOARD_DATA_ENV):  # for tests/monitoring/render_dashboards.py
        save_results(Path(os.environ[DASHBOARD_DATA_ENV]), queries, results)
    assert problems(queries, results) == []


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for file in sorted((run_dir / "final_model").glob("*.safetensors")):
        weights.update(load_file(file))
    return weights


def test_sigterm_checkpoints_and_resume_matches_uninterrupted(reference_run: Path, tmp_path: Path) -> None:
    """The off-policy checkpoint keeps the in-flight rollout (generated with the weights before the last
    update, which a resumed run no longer has) and the cursor it started from: no prompt is skipped, and the
    final weights are bitwise the uninterrupted run's."""
    spec = write_spec(tmp_path, schedule=OFF_POLICY, observability=NO_REPORT)
    run_dir = tmp_path / "runs" / "smoke"
    process = forkrl_train(spec)
    deadline = time.monotonic() + 600
    while not read_records(run_dir / "metrics.jsonl", "train") and time.monotonic() < deadline \
            and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "received SIGTERM" in output and "--resume" in output
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints/latest").read_text()
    assert 1 <= json.loads((latest / "controller.json").read_text())["step"] < STEPS
    assert (latest / "inflight_rollout.pt").exists()
    assert not (run_dir / "final_model").exists()

    resumed = forkrl_train(spec, "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "resumed from" in output
    records = read_step_records(run_dir / "metrics.jsonl")
    assert [r.step for r in records] == list(range(1, STEPS + 1))
    # The resumed steps trained on the very samples of the uninterrupted run.
    assert [r.trained for r in records] == [r.trained for r in read_step_records(reference_run / "metrics.jsonl")]
    expected, got = _final_weights(reference_run), _final_weights(run_dir)
    assert expected.keys() == got.keys() and expected
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_faults_verifier_kill_replica_restart_and_membership(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from forkrl.trainer.controller.loop import run

    monkeypatch.chdir(tmp_path)
    spec = load_spec(write_spec(tmp_path, schedule={"steps": 4}, observability=NO_REPORT))
    seen: dict[str, object] = {}

    async def after_step(local, step: int) -> None:
        if step == 1:  # verifier crashes; it comes back 2 s later while the controller retries
            local.verifier_process.kill()
            threading.Timer(2.0, local.verifier_process.start).start()
        elif step == 2:  # the rollout replica crashes and restarts with no weights (version 0)
            local.replica_processes[0].restart()
            seen["restarted_version"] = (await local.replicas.versions())[local.replica_processes[0].url]
        elif step == 3:  # scale: a new replica joins, the first one leaves
            seen["new"] = local.add_replica()
            local.remove_replica(local.replica_processes[0])
        else:
            seen["final_versions"] = await local.replicas.versions()
            seen["verifier_alive"] = local.verifier_process.alive()

    assert asyncio.run(run(spec, quiet=True, after_step=after_step)) == 0
    records = read_step_records(Path("runs/smoke/metrics.jsonl"))
    assert [r.step for r in records] == [1, 2, 3, 4]
    assert all(r.generated.samples == 16 for r in records)  # nothing lost, nothing scored twice
    assert seen["restarted_version"] == 0
    assert records[2].replicas.repushed_total == 1  # the restarted replica was detected and re-pushed
    assert records[3].replicas.repushed_total == 2  # the new replica got weights before serving
    assert seen["final_versions"] == {seen["new"].url: 4}
    assert seen["verifier_alive"] is True


def test_unwritable_checkpoint_dir_fails_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    spec = write_spec(tmp_path, checkpoint={"dir": str(blocker / "ckpt")})
    result = subprocess.run([sys.executable, "-m", "forkrl.trainer.cli", "train", str(spec), "--quiet"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "is not writable" in result.stderr
    assert not (tmp_path / "runs/smoke/cold_start_model").exists()  # nothing ran


def test_full_disk_is_reported_with_sizes(tmp_path: Path) -> None:
    with pytest.raises(PreflightError, match=r"MiB free but one checkpoint needs about"):
        preflight_checkpoint_dir(tmp_path, needed_bytes=2**62)
