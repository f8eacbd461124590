"""Typed results of the benchmark suite, and the JSON file they are saved as.

* :class:`Cpu` - CPU spent over a timed job (the worker's own, the whole machine's);
* :class:`RunResult` - one run of one contender: wall time, stage seconds, counts, CPU, peak RSS.
  The worker (``benchmarks.run_one``) prints it as one JSON line; the suite adds what it measures
  from outside the process (peak RSS, process wall time) and keeps the median of the repeats;
* :class:`Check` - two events tables compared row for row;
* :class:`SizeResult` - every contender on one size of history, with the checks between them;
* :class:`DailyRun`, :class:`DailyResult` - the 1-day incremental CLI runs;
* :class:`Target` - one target, measured against its threshold (recorded, never asserted);
* :class:`SuiteResult` - a whole run: what ``benchmarks/results/*.json`` holds, what the report renders.

Derived figures (rates, ratios, checks' verdicts, targets) are properties or functions of the
measured ones. ``to_json`` writes them too, for whoever reads the file; ``from_json`` never reads
them back, so an old file is always re-rendered with the current rules.

File format: ``"format": 2``. Files without the key (format 1, written before these types) have the
same layout for every measured figure and load as they are.

This module uses only the standard library: the light workers import it.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Any

FORMAT = 2
PRODUCTS = ("product", "product_adbc")  # the product's contenders; ``product`` is the headline
CONTENDERS = ("baseline", *PRODUCTS, "floor")  # in the order of the tables
# Counters a contender may report (commits, retries, bytes moved, ...), kept as they are.
COUNT_KEYS = (
    "bad_bars",
    "chunks",
    "batches",
    "commits",
    "retries",
    "rows_inserted",
    "purged",
    "read_bytes",
    "write_bytes",
)
# Target id: (what the target says, its threshold, the limit, whether the limit is a minimum).
TARGETS = {
    "e2e_vs_floor": ("full history end to end <= 1.2x the floor", "<= 1.2", 1.2, False),
    "vs_baseline": (">= 15x faster than the baseline", ">= 15", 15.0, True),
    "time_per_bar_flat": (
        "time per bar flat (+-15 %) from 1 to 16 years",
        "<= 0.15 (largest deviation from the smallest size)",
        0.15,
        False,
    ),
    "peak_rss_growth": ("peak RSS at 16 years <= 1.3x that at 1 year", "<= 1.3", 1.3, False),
    "daily_wall": (
        "1-day run <= 1 s wall against a running server",
        "<= 1.0 s (median wall, process start included)",
        1.0,
        False,
    ),
}


def _median_of(items: list[Any], key: Any) -> Any:
    """The item with the median ``key`` (the lower middle one for an even count)."""
    return sorted(items, key=key)[(len(items) - 1) // 2]


@dataclass(frozen=True)
class Cpu:
    """CPU over a timed job: the worker's own CPU seconds (all its threads) and the whole machine's
    busy and total core-seconds (``/proc/stat``: server backends, kernel and other work included)."""

    process_s: float
    machine_busy_core_s: float
    machine_core_s: float

    def __add__(self, other: Cpu) -> Cpu:
        return Cpu(
            round(self.process_s + other.process_s, 3),
            round(self.machine_busy_core_s + other.machine_busy_core_s, 3),
            round(self.machine_core_s + other.machine_core_s, 3),
        )

    def to_json(self) -> dict[str, float]:
        return {
            "process_cpu_s": self.process_s,
            "machine_busy_core_s": self.machine_busy_core_s,
            "machine_core_s": self.machine_core_s,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cpu | None:
        if data.get("process_cpu_s") is None:
            return None  # runs recorded before the CPU was measured
        return cls(data["process_cpu_s"], data["machine_busy_core_s"], data["machine_core_s"])


@dataclass(frozen=True)
class RunResult:
    """One run of one contender (in a :class:`SizeResult`: the run with the median time)."""

    contender: str
    e2e_s: float  # the job, timed inside the worker (imports excluded)
    stage_seconds: dict[str, float]  # read, detect (hygiene + detect), write
    bars: int
    events: int
    import_s: float | None = None
    cpu: Cpu | None = None
    counts: dict[str, int] = field(default_factory=dict)  # keys from COUNT_KEYS
    settings: dict[str, Any] | None = None  # the product contenders' settings
    self_reported_peak_rss_mb: float | None = None  # VmHWM, read inside the worker
    # Measured from outside the worker (``benchmarks.spawn``):
    peak_rss_mb: float | None = None  # wait4
    process_wall_s: float | None = None  # process start to exit, imports included
    # Every repeat's end-to-end time and peak RSS, in the order they ran:
    runs_e2e_s: list[float] = field(default_factory=list)
    runs_peak_rss_mb: list[float | None] = field(default_factory=list)
    note: str | None = None

    @property
    def bars_per_s(self) -> int | None:
        return round(self.bars / self.e2e_s) if self.e2e_s > 0 else None

    @property
    def events_per_s(self) -> int | None:
        return round(self.events / self.e2e_s) if self.e2e_s > 0 else None

    @property
    def us_per_bar(self) -> float | None:
        return round(self.e2e_s / self.bars * 1e6, 4) if self.bars else None

    def measured_from_outside(self, wall_s: float, maxrss_kb: int) -> RunResult:
        """This run with the process's wall time and peak RSS (``wait4``), as its only repeat."""
        peak = round(maxrss_kb / 1024, 1)
        return replace(
            self,
            peak_rss_mb=peak,
            process_wall_s=round(wall_s, 4),
            runs_e2e_s=[self.e2e_s],
            runs_peak_rss_mb=[peak],
        )

    @staticmethod
    def median(runs: list[RunResult]) -> RunResult:
        """The run with the median end-to-end time, holding every repeat's time and peak RSS."""
        return replace(
            _median_of(runs, key=lambda r: r.e2e_s),
            runs_e2e_s=[r.e2e_s for r in runs],
            runs_peak_rss_mb=[r.peak_rss_mb for r in runs],
        )

    def to_json(self) -> dict[str, Any]:
        data = {
            "contender": self.contender,
            "e2e_s": self.e2e_s,
            "stage_seconds": self.stage_seconds,
            "bars": self.bars,
            "events": self.events,
            "import_s": self.import_s,
            **(self.cpu.to_json() if self.cpu else {}),
            **self.counts,
            "settings": self.settings,
            "self_reported_peak_rss_mb": self.self_reported_peak_rss_mb,
            "peak_rss_mb": self.peak_rss_mb,
            "process_wall_s": self.process_wall_s,
            "bars_per_s": self.bars_per_s,
            "events_per_s": self.events_per_s,
            "us_per_bar": self.us_per_bar,
            "repeats": len(self.runs_e2e_s),
            "runs_e2e_s": self.runs_e2e_s,
            "runs_peak_rss_mb": self.runs_peak_rss_mb,
            "note": self.note,
        }
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        return cls(
            contender=data["contender"],
            e2e_s=float(data["e2e_s"]),
            stage_seconds={k: float(v) for k, v in data.get("stage_seconds", {}).items()},
            bars=int(data.get("bars") or 0),
            events=int(data.get("events") or 0),
            import_s=data.get("import_s"),
            cpu=Cpu.from_json(data),
            counts={k: data[k] for k in COUNT_KEYS if k in data},
            settings=data.get("settings"),
            self_reported_peak_rss_mb=data.get("self_reported_peak_rss_mb"),
            peak_rss_mb=data.get("peak_rss_mb"),
            process_wall_s=data.get("process_wall_s"),
            runs_e2e_s=list(data.get("runs_e2e_s", [])),
            runs_peak_rss_mb=list(data.get("runs_peak_rss_mb", [])),
            note=data.get("note"),
        )


@dataclass(frozen=True)
class Check:
    """Two events tables compared with SQL ``EXCEPT`` both ways, plus their row counts."""

    identical: bool
    rows: dict[str, int]  # table -> rows compared
    only_in: dict[str, int]  # table -> rows the other table lacks

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Check:
        return cls(bool(data["identical"]), dict(data["rows"]), dict(data["only_in"]))


@dataclass
class SizeResult:
    """Every contender on one size of history (START = first day + 7 days, END = last day)."""

    size: str  # label: "16y", "14d", ...
    years: float
    first_day: str
    last_day: str
    start: str
    end: str
    bars_table: str
    bars_in_table: int
    events_tables: dict[str, str]  # contender -> its events table
    runs: dict[str, RunResult] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # contender -> why it did not run
    checks: dict[str, Check] = field(default_factory=dict)  # "baseline_vs_product", ...

    def over_floor(self, name: str, stage: str | None = None) -> float | None:
        """Contender / floor end to end, or for ``stage`` ("read", "write") against that floor."""
        run, floor = self.runs.get(name), self.runs.get("floor")
        if not (run and floor and "write" in floor.stage_seconds):
            return None
        if stage is None:
            return round(run.e2e_s / floor.e2e_s, 3)
        return round(run.stage_seconds[stage] / floor.stage_seconds[stage], 3)

    def baseline_over(self, name: str) -> float | None:
        """How many times faster than the baseline the contender ran."""
        run, baseline = self.runs.get(name), self.runs.get("baseline")
        return round(baseline.e2e_s / run.e2e_s, 2) if run and baseline else None

    def cpu_bound_limit(self, name: str, cores: int | None) -> float | None:
        """The best end to end / floor this run's CPU allows: the machine's busy core-seconds
        spread perfectly over every core, against the floor's wall time."""
        run, floor = self.runs.get(name), self.runs.get("floor")
        if not (run and floor and cores and run.cpu and run.cpu.machine_busy_core_s):
            return None
        return run.cpu.machine_busy_core_s / cores / floor.e2e_s

    def same_events(self, name: str) -> dict[str, bool]:
        """Whether a product contender wrote the baseline's events (and, for another than
        ``product``, the product's), for the checks that ran."""
        keys = {"baseline": f"baseline_vs_{name}"}
        if name != "product":
            keys["product"] = f"{name}_vs_product"
        return {other: self.checks[key].identical for other, key in keys.items() if key in self.checks}

    @property
    def events_identical(self) -> bool | None:
        check = self.checks.get("baseline_vs_product")
        return check.identical if check else None

    @property
    def product_adbc_events_identical(self) -> bool | None:
        found = [c.identical for key, c in self.checks.items() if "product_adbc" in key]
        return all(found) if found else None

    def ratios(self) -> dict[str, float]:
        """Every ratio of this size, for the JSON file's readers."""
        ratios: dict[str, float | None] = {}
        for name in PRODUCTS:
            ratios[f"{name}_over_floor"] = self.over_floor(name)
            ratios[f"{name}_read_over_read_floor"] = self.over_floor(name, "read")
            ratios[f"{name}_write_over_write_floor"] = self.over_floor(name, "write")
            ratios[f"baseline_over_{name}"] = self.baseline_over(name)
        if all(name in self.runs for name in PRODUCTS):
            ratios["product_over_product_adbc"] = round(
                self.runs["product"].e2e_s / self.runs["product_adbc"].e2e_s, 3
            )
        return {key: value for key, value in ratios.items() if value is not None}

    def to_json(self) -> dict[str, Any]:
        contenders = {name: run.to_json() for name, run in self.runs.items()}
        contenders |= {name: {"skipped": why} for name, why in self.skipped.items()}
        return {
            "size": self.size,
            "years": self.years,
            "first_day": self.first_day,
            "last_day": self.last_day,
            "start": self.start,
            "end": self.end,
            "bars_table": self.bars_table,
            "bars_in_table": self.bars_in_table,
            "events_tables": self.events_tables,
            "contenders": contenders,
            "checks": {key: check.to_json() for key, check in self.checks.items()},
            "ratios": self.ratios(),
            "events_identical": self.events_identical,
            "product_adbc_events_identical": self.product_adbc_events_identical,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SizeResult:
        contenders = data.get("contenders", {})
        return cls(
            **{key: data[key] for key in ("size", "years", "first_day", "last_day", "start", "end")},
            bars_table=data["bars_table"],
            bars_in_table=int(data["bars_in_table"]),
            events_tables=dict(data.get("events_tables", {})),
            runs={
                name: RunResult.from_json({**run, "contender": name})
                for name, run in contenders.items()
                if "e2e_s" in run
            },
            skipped={name: run["skipped"] for name, run in contenders.items() if "skipped" in run},
            checks={key: Check.from_json(check) for key, check in data.get("checks", {}).items()},
        )


@dataclass(frozen=True)
class DailyRun:
    """One run of the 1-day CLI command, timed from outside the process."""

    wall_s: float  # process start to exit
    duration_s: float  # the job, as the CLI's --json reports it
    peak_rss_mb: float
    bars_processed: int
    triangles: int
    stage_seconds: dict[str, float]
    commits: int


@dataclass
class DailyResult:
    """The field report's small-range test through the real ``triangles`` CLI."""

    command: str
    bars_table: str
    events_table: str
    all_runs: list[DailyRun]  # the warm-up run first
    check: Check | None = None  # against the full-history run's events of that day

    @property
    def timed(self) -> list[DailyRun]:
        return self.all_runs[1:]

    @property
    def warmup_wall_s(self) -> float:
        return self.all_runs[0].wall_s

    @property
    def wall_s_median(self) -> float:
        return round(statistics.median(r.wall_s for r in self.timed), 4)

    @property
    def wall_s_min(self) -> float:
        return min(r.wall_s for r in self.timed)

    @property
    def wall_s_max(self) -> float:
        return max(r.wall_s for r in self.timed)

    @property
    def peak_rss_mb(self) -> float:
        return max(r.peak_rss_mb for r in self.timed)

    @property
    def in_process_s_median(self) -> float:
        return round(statistics.median(r.duration_s for r in self.timed), 4)

    @property
    def process_overhead_s_median(self) -> float:
        return round(statistics.median(r.wall_s - r.duration_s for r in self.timed), 4)

    @property
    def typical(self) -> DailyRun:
        """The timed run with the median wall time."""
        return _median_of(self.timed, key=lambda r: r.wall_s)

    @property
    def matches_full_history(self) -> bool | None:
        return self.check.identical if self.check else None

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "bars_table": self.bars_table,
            "events_table": self.events_table,
            "runs": len(self.timed),
            "wall_s_median": self.wall_s_median,
            "wall_s_min": self.wall_s_min,
            "wall_s_max": self.wall_s_max,
            "warmup_wall_s": self.warmup_wall_s,
            "in_process_s_median": self.in_process_s_median,
            "process_overhead_s_median": self.process_overhead_s_median,
            "peak_rss_mb": self.peak_rss_mb,
            "bars_processed": self.typical.bars_processed,
            "triangles": self.typical.triangles,
            "stage_seconds": self.typical.stage_seconds,
            "all_runs": [asdict(run) for run in self.all_runs],
            "matches_full_history": self.matches_full_history,
            "check": self.check.to_json() if self.check else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DailyResult:
        check = data.get("check")
        return cls(
            command=data["command"],
            bars_table=data["bars_table"],
            events_table=data["events_table"],
            all_runs=[DailyRun(**run) for run in data["all_runs"]],
            check=Check.from_json(check) if check else None,
        )


@dataclass(frozen=True)
class Target:
    """One target of the suite, measured (or not) against its threshold."""

    id: str  # a key of TARGETS
    contender: str
    measured: float | None
    passed: bool | None  # None: not measured
    evaluated_on: list[str]  # sizes (or "1 day") it was evaluated on
    note: str | None = None
    per_size: dict[str, float] | None = None  # the measured figure per size, where it has one

    @property
    def text(self) -> str:
        return TARGETS[self.id][0]

    @property
    def threshold(self) -> str:
        return TARGETS[self.id][1]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pass"] = data.pop("passed")
        return {**data, "target": self.text, "threshold": self.threshold}


def _target(
    key: str, contender: str, measured: float | None, on: list[str], wanted: list[str], **extra: Any
) -> Target:
    """A target measured on ``on`` (sizes), with a note when they are not the ones it names."""
    if measured is None:
        return Target(key, contender, None, None, [], "not measured in this run")
    _text, _threshold, limit, at_least = TARGETS[key]
    scope = (
        None if on == wanted else f"evaluated on {' and '.join(on)} (the target names {' and '.join(wanted)})"
    )
    note = "; ".join(x for x in (scope, extra.pop("note", None)) if x) or None
    passed = measured >= limit if at_least else measured <= limit
    return Target(key, contender, measured, passed, on, note, **extra)


def _full_history_targets(sizes: list[SizeResult], name: str) -> list[Target]:
    """The four full-history targets for one product contender, on the largest sizes measured."""
    floor = {s.size: s.over_floor(name) for s in sizes if s.over_floor(name) is not None}
    baseline = {s.size: s.baseline_over(name) for s in sizes if s.baseline_over(name) is not None}
    runs = {s.size: s.runs[name] for s in sizes if name in s.runs}
    targets = []
    if floor:
        size = list(floor)[-1]
        targets.append(_target("e2e_vs_floor", name, floor[size], [size], ["16y"]))
    else:
        targets.append(_target("e2e_vs_floor", name, None, [], []))
    if baseline:
        size = list(baseline)[-1]
        targets.append(_target("vs_baseline", name, baseline[size], [size], ["16y"], per_size=baseline))
    else:
        targets.append(_target("vs_baseline", name, None, [], []))
    if len(runs) < 2:
        return [
            *targets,
            *(_target(key, name, None, [], []) for key in ("time_per_bar_flat", "peak_rss_growth")),
        ]
    first, *_, last = runs
    per_bar = {size: run.us_per_bar for size, run in runs.items()}
    deviation = round(max(abs(v / per_bar[first] - 1) for v in per_bar.values()), 3)
    falls = deviation > 0.15 and per_bar[last] < per_bar[first]
    note = (
        "time per bar falls as the history grows (fixed start-up costs weigh more on small runs): "
        "not flat, but it does not grow"
    )
    rss = {size: run.peak_rss_mb for size, run in runs.items()}
    span, wanted = [first, last], ["1y", "16y"]
    return [
        *targets,
        _target(
            "time_per_bar_flat", name, deviation, span, wanted, per_size=per_bar, note=note if falls else None
        ),
        _target("peak_rss_growth", name, round(rss[last] / rss[first], 3), span, wanted, per_size=rss),
    ]


def evaluate_targets(suite: SuiteResult) -> list[Target]:
    """Every target: the four full-history ones for each product contender that ran (``product``,
    the default configuration, first), and after the first one's, the 1-day run's (CLI defaults)."""
    ran = [name for name in PRODUCTS if any(name in s.runs for s in suite.sizes)] or ["product"]
    if suite.daily:
        day = _target("daily_wall", "product", suite.daily.wall_s_median, ["1 day"], ["1 day"])
    else:
        day = _target("daily_wall", "product", None, [], [])
    targets: list[Target] = []
    for name in ran:
        targets += _full_history_targets(suite.sizes, name) + ([day] if name == ran[0] else [])
    return targets


@dataclass
class SuiteResult:
    """A whole run of the suite. ``machine``, ``server``, ``config`` and ``workloads`` are
    provenance (versions, load averages, command line, bars tables), kept as recorded."""

    started_at: str
    quick: bool
    machine: dict[str, Any]
    server: dict[str, Any]
    config: dict[str, Any]
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    sizes: list[SizeResult] = field(default_factory=list)
    daily: DailyResult | None = None
    notes: list[str] = field(default_factory=list)
    finished_at: str | None = None
    suite_wall_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "suite": "triangles_polars benchmarks",
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "suite_wall_s": self.suite_wall_s,
            "quick": self.quick,
            "machine": self.machine,
            "server": self.server,
            "config": self.config,
            "notes": self.notes,
            "workloads": self.workloads,
            "sizes": [size.to_json() for size in self.sizes],
            "daily": self.daily.to_json() if self.daily else None,
            "targets": [target.to_json() for target in evaluate_targets(self)],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SuiteResult:
        if data.get("format", 1) > FORMAT:
            raise ValueError(f"results file of format {data['format']}; this code reads up to {FORMAT}")
        return cls(
            started_at=data["started_at"],
            quick=bool(data.get("quick")),
            machine=data.get("machine", {}),
            server=data.get("server", {}),
            config=data.get("config", {}),
            workloads=data.get("workloads", {}),
            sizes=[SizeResult.from_json(size) for size in data.get("sizes", [])],
            daily=DailyResult.from_json(data["daily"]) if data.get("daily") else None,
            notes=list(data.get("notes", [])),
            finished_at=data.get("finished_at"),
            suite_wall_s=data.get("suite_wall_s"),
        )
