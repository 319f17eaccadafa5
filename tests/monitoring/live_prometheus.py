"""A real Prometheus for the tests: Debian's `prometheus` (scripts/setup.sh installs it) on 127.0.0.1 and a
free port, with its TSDB in a temporary folder, scraping every second whatever targets the test adds.

Targets come through file-based service discovery: `add_targets_from(line)` takes a line of a run's output,
and each `metrics: http://HOST:PORT/metrics` it names (the controller's, and each local service's) is written
to the discovery file at once; Prometheus re-reads it within seconds. Queries go through the HTTP API.

    prometheus = LivePrometheus.start(binary, tmp_path)
    try:
        prometheus.add_targets_from("metrics: http://127.0.0.1:41000/metrics")
        ...
        series = prometheus.query_range('forkrl_trainer_step{run="smoke"}', start, end)
    finally:
        prometheus.stop()
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from forkrl.rollout.network import LOCAL_BIND_HOST
from forkrl.trainer.learner.launch import free_port

METRICS_URL = re.compile(r"metrics: http://(\S+?)/metrics\b")
SCRAPE_INTERVAL_S = 1
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only: never through a proxy


def find_prometheus() -> Path | None:
    found = shutil.which("prometheus")
    return Path(found) if found else None


class PromQLError(RuntimeError):
    """Prometheus refused a query (bad PromQL, or a query it could not run)."""


@dataclass
class Series:
    """One series of a range query: its labels and its (unix time, value) points, NaN included."""

    labels: dict[str, str]
    points: list[tuple[float, float]]

    @property
    def finite(self) -> bool:
        return any(math.isfinite(value) for _, value in self.points)


@dataclass
class LivePrometheus:
    process: subprocess.Popen
    url: str
    workdir: Path
    targets: list[str] = field(default_factory=list)
    first_target_at: float | None = None
    """Unix time the first target was written: where the data of a range query can begin."""
    finished_at: float | None = None
    """Unix time the scraped run ended (set by its starter): where the data ends."""

    @property
    def targets_file(self) -> Path:
        return self.workdir / "targets.json"

    @classmethod
    def start(cls, binary: Path, workdir: Path, timeout_s: float = 60.0) -> LivePrometheus:
        """Start prometheus and wait until it is ready; a port taken meanwhile by another process is retried."""
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "scrape_timeout": f"{SCRAPE_INTERVAL_S}s",
                       "evaluation_interval": "1m"},
            "scrape_configs": [{
                "job_name": "forkrl",
                "file_sd_configs": [{"files": [str(workdir / "targets.json")], "refresh_interval": "1s"}],
            }],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        (workdir / "targets.json").write_text("[]")
        for attempt in range(3):
            port = free_port()
            with (workdir / "prometheus.log").open("ab") as log:
                process = subprocess.Popen(
                    [str(binary), f"--config.file={workdir / 'prometheus.yml'}",
                     f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address={LOCAL_BIND_HOST}:{port}",
                     "--storage.tsdb.retention.time=1d", "--log.level=warn"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            prometheus = cls(process, f"http://{LOCAL_BIND_HOST}:{port}", workdir)
            if prometheus._wait_ready(timeout_s):
                return prometheus
            prometheus.stop()
            if attempt == 2 or "address already in use" not in prometheus.log_tail():
                break
        raise RuntimeError(f"prometheus did not become ready; log {workdir / 'prometheus.log'}:\n"
                           f"{prometheus.log_tail()}")

    def _wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with _HTTP.open(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        return False

    def log_tail(self, lines: int = 20) -> str:
        text = (self.workdir / "prometheus.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User and system CPU time the prometheus process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (prometheus flushes and exits), SIGKILL after `timeout_s`; only this process."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def add_targets_from(self, line: str) -> list[str]:
        """Add every `metrics: http://HOST:PORT/metrics` of `line` as a scrape target; returns the new ones."""
        new = [target for target in METRICS_URL.findall(line) if target not in self.targets]
        if new:
            self.targets.extend(new)
            if self.first_target_at is None:
                self.first_target_at = time.time()
            temp = self.targets_file.with_name("targets.json.tmp")  # not matched by file_sd: a whole file appears
            temp.write_text(json.dumps([{"targets": self.targets, "labels": {}}]))
            os.replace(temp, self.targets_file)
        return new

    def _get(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with _HTTP.open(url, timeout=60) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:  # 400/422: the body says why
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            raise PromQLError(f"{params.get('query', path)}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step_s: float = SCRAPE_INTERVAL_S) -> list[Series]:
        """Every series `expr` returns between `start` and `end` (unix times), one point per `step_s`."""
        data = self._get("/api/v1/query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                                 "step": f"{step_s}s"})
        assert data["resultType"] == "matrix", data["resultType"]
        return [Series(item["metric"], [(float(t), float(v)) for t, v in item["values"]]) for item in data["result"]]
