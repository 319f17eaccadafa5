"""Draw forkrl's Grafana dashboards as PNGs from what a real Prometheus returned for them on a local run.

The live test (tests/trainer/controller/test_e2e.py) queries every panel on a Prometheus that scraped its
reference run; with FORKRL_DASHBOARD_DATA=FILE it also writes the results there. This script lays out each
dashboard as Grafana does (its 24-column grid, rows as headings, the panels' units and legends) and plots
the series with matplotlib:

    FORKRL_DASHBOARD_DATA=/tmp/dashboards.json python -m pytest tests/trainer/controller/test_e2e.py -k every_panel
    python -m tests.monitoring.render_dashboards /tmp/dashboards.json docs/dashboards
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

from forkrl.operator.dashboards import dashboard_files
from tests.monitoring.live_queries import NO_LOCAL_DATA

COLUMNS = 24
ROW_INCHES = 0.38
TITLE_INCHES = 0.5
WIDTH_INCHES = 22.0
DPI = 72


def _legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip() or "value"


def _format_axis(axes: Any, unit: str) -> None:
    if unit == "percentunit":
        axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    elif unit == "bytes":
        axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 2**20:.0f} MiB"))
    elif unit in ("s", "reqps"):
        axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g} {'s' if unit == 's' else 'req/s'}"))


def _draw_panel(axes: Any, panel: dict[str, Any], uid: str, data: dict[str, Any], span: tuple[float, float]
                ) -> None:
    start, end = span
    axes.set_title(panel["title"], fontsize=9, loc="left")
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    plotted, missing = 0, []
    for target in panel["targets"]:
        query_id = f"{uid} / {panel['title']} / {target['refId']}"
        result = data.get(query_id)
        if result is None:
            missing.append("not queried")
            continue
        for series in result["series"]:
            times = [t - start for t, _ in series["points"]]
            values = [v if math.isfinite(v) else math.nan for _, v in series["points"]]
            axes.plot(times, values, linewidth=1, label=_legend(target["legendFormat"], series["labels"]))
            plotted += 1
        if not result["series"]:
            missing.append(NO_LOCAL_DATA.get(query_id, "no data"))
    if plotted:
        axes.legend(fontsize=6, loc="upper left", ncols=2 if plotted > 6 else 1, framealpha=0.6)
        _format_axis(axes, panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short"))
    axes.set_xlim(0, end - start)  # one time axis for every panel, as in Grafana
    axes.set_xlabel("seconds since the first scrape", fontsize=7)
    if not plotted:
        axes.set_yticks([])
    if missing:
        axes.text(0.5, 0.5 if not plotted else 0.06, "no data in a local run:\n" + "\n".join(sorted(set(missing))),
                  transform=axes.transAxes, ha="center", va="center", fontsize=7, wrap=True, color="0.35")


def render(dashboard: dict[str, Any], data: dict[str, Any], path: Path) -> None:
    """One PNG of `dashboard` (Grafana JSON) with the series of `data` (save_results' format), each panel
    where its gridPos puts it: 24 columns across the figure's width, ROW_INCHES per grid row."""
    panels = dashboard["panels"]
    height = max(panel["gridPos"]["y"] + panel["gridPos"]["h"] for panel in panels) * ROW_INCHES + TITLE_INCHES
    times = [t for result in data.values() for series in result["series"] for t, _ in series["points"]]
    span = (min(times, default=0.0), max(times, default=1.0))
    figure = Figure(figsize=(WIDTH_INCHES, height))  # no pyplot: no global state
    figure.suptitle(f"{dashboard['title']}: a local run of tests/trainer/controller/smoke.yaml scraped every "
                    "second by Prometheus", fontsize=12, y=1 - 0.15 / height)
    column = WIDTH_INCHES / COLUMNS
    for panel in panels:
        pos = panel["gridPos"]
        left, top = pos["x"] * column, TITLE_INCHES + pos["y"] * ROW_INCHES
        width, tall = pos["w"] * column, pos["h"] * ROW_INCHES
        if panel["type"] == "row":
            figure.text(left / WIDTH_INCHES, 1 - (top + tall / 2) / height, panel["title"], fontsize=11,
                        fontweight="bold", va="center")
            continue
        margins = (0.55, 0.15, 0.3, 0.45)  # left, right, top, bottom (inches: tick labels, title, x label)
        rect = ((left + margins[0]) / WIDTH_INCHES, 1 - (top + tall - margins[3]) / height,
                (width - margins[0] - margins[1]) / WIDTH_INCHES, (tall - margins[2] - margins[3]) / height)
        _draw_panel(figure.add_axes(rect), panel, dashboard["uid"], data, span)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the JSON the live test wrote (FORKRL_DASHBOARD_DATA)")
    parser.add_argument("out", type=Path, help="folder for <dashboard uid>.png")
    args = parser.parse_args(argv)
    data = json.loads(args.data.read_text())
    for path, text in sorted(dashboard_files().items()):
        dashboard = json.loads(text)
        render(dashboard, data, args.out / f"{path.stem}.png")
        print(args.out / f"{path.stem}.png")


if __name__ == "__main__":
    main()
