"""Building blocks of forkrl's Grafana dashboards, on grafana-foundation-sdk: PromQL helpers that take
`MetricSpec`s (so a panel can only name a metric some component declares) and a `Board` that numbers and
lays out time-series panels under rows."""

from __future__ import annotations

import json
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common, prometheus, timeseries
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement, TooltipDisplayMode

from forkrl.rollout.metric_spec import MetricSpec

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
RUN = 'run=~"$run"'
WINDOW = "$__rate_interval"
PANEL_HEIGHT = 8


def _selector(spec: MetricSpec, suffix: str, matchers: dict[str, str]) -> str:
    parts = [RUN if "run" in spec.labels else "", *(f'{key}="{value}"' for key, value in matchers.items())]
    body = ",".join(part for part in parts if part)
    return f"{spec.name}{suffix}{{{body}}}" if body else f"{spec.name}{suffix}"


def series(spec: MetricSpec, **matchers: str) -> str:
    """The metric's series, of the selected runs where it has a `run` label."""
    return _selector(spec, "", matchers)


def rate(spec: MetricSpec, *by: str, **matchers: str) -> str:
    """Per-second rate of a counter, summed by `by` (over everything without)."""
    grouping = f" by ({', '.join(by)})" if by else ""
    return f"sum{grouping} (rate({_selector(spec, '', matchers)}[{WINDOW}]))"


def quantile(q: float, spec: MetricSpec, *by: str, **matchers: str) -> str:
    """The q-quantile of a histogram over the rate window, by `by`."""
    bucket = _selector(spec, "_bucket", matchers)
    return f"histogram_quantile({q:g}, sum by ({', '.join(('le', *by))}) (rate({bucket}[{WINDOW}])))"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    width: int = 8


class Board:
    """One dashboard: a data-source variable, a `run` variable read from `run_metric`, links to the other
    forkrl dashboards, and panels added row by row (the SDK lays them out left to right)."""

    def __init__(self, uid: str, title: str, description: str, run_metric: MetricSpec) -> None:
        self._next_id = 1
        self._builder = (
            builders.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags(["forkrl"])
            .timezone("browser")
            .refresh("30s")
            .time("now-6h", "now")
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .link(
                builders.DashboardLink("forkrl dashboards")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags(["forkrl"])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
            .with_variable(builders.DatasourceVariable("datasource").label("Data source").type("prometheus"))
            .with_variable(
                builders.QueryVariable("run")
                .label("Run")
                .description("forkrl runs (RLVRJob names) that export the metric")
                .datasource(DATASOURCE)
                .query(f"label_values({run_metric.name}, run)")
                .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(model.VariableSort.ALPHABETICAL_ASC)
                .multi(True)
                .include_all(True)
                .all_value(".*")
            )
        )

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def row(self, title: str, *panels: Panel) -> Board:
        self._builder.with_row(builders.Row(title).id(self._id()))
        for panel in panels:
            self._builder.with_panel(self._panel(panel))
        return self

    def _panel(self, panel: Panel) -> timeseries.Panel:
        built = (
            timeseries.Panel()
            .id(self._id())
            .title(panel.title)
            .description(panel.description)
            .datasource(DATASOURCE)
            .unit(panel.unit)
            .height(PANEL_HEIGHT)
            .span(panel.width)
            .line_width(1)
            .fill_opacity(10)
            .legend(common.VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM)
                    .show_legend(True))
            .tooltip(common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI))
        )
        for index, query in enumerate(panel.queries):
            built.with_target(
                prometheus.Dataquery().ref_id(chr(ord("A") + index)).expr(query.expr).legend_format(query.legend)
                .datasource(DATASOURCE)
            )
        return built

    def json(self) -> str:
        return json.dumps(self._builder.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
