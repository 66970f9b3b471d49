"""Failure scenarios: the context a scenario runs in, the proxies' figures (read from their /metrics),
and the report with its verdict against the scenario's SLO (exit code 0 PASS, 1 FAIL, 77 skipped).

A scenario is a module of the `scenarios/` folder with a docstring (first line: `NAME: what
happens`), a `TITLE`, a `run(run: Run) -> Report` and, if it cannot run on pods, `LOOPBACK_ONLY`
(why); `mitmesh scenario NAME` runs it here. The
runner loads that folder by its path (FOLDER): the product (mesh/) never imports a scenario.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from prometheus_client.parser import text_string_to_metric_families

from tools.testbed import Sample

PASS, FAIL, SKIPPED = 0, 1, 77


class Skip(Exception):
    """The scenario cannot run on this machine (why is the message)."""


class Run:
    """What a scenario gets: full or short mode, a work directory for its files and logs, the
    isolation its instances run in (pod or loopback), and a progress line printer."""

    def __init__(self, name: str, short: bool, workdir: Path, out=None, isolation: str = "loopback"):
        self.name, self.short, self.workdir, self.isolation = name, short, workdir, isolation
        self.out = out or sys.stdout
        self.t0 = time.time()

    def pick(self, full, short):
        """The full run's value, or the short run's."""
        return short if self.short else full

    def say(self, text: str) -> None:
        print(f"  {time.time() - self.t0:6.1f}s  {text}", file=self.out, flush=True)


def fetch(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode("utf-8", "replace")


def parse_metrics(text: str) -> dict[tuple, float]:
    """Prometheus text → {(sample name, sorted label items): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class Proxies:
    """The /metrics of the proxies of a scenario (the gateway, every sidecar), polled in the
    background while the load runs, so a proxy that is killed keeps its last figures. Figures are
    counted from `baseline()` on."""

    def __init__(self):
        self._fetch: dict[str, Callable[[], str]] = {}
        self.last: dict[str, dict[tuple, float]] = {}
        self.base: dict[str, dict[tuple, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def add(self, name: str, admin: str, via: Callable[[Callable[[], str]], str] | None = None) -> None:
        """Watch the proxy whose admin listener is `admin` (http://host:port); `via(fn)` runs the
        fetch elsewhere (inside a network namespace)."""
        url = admin.rstrip("/") + "/metrics"
        self._fetch[name] = (lambda: via(lambda: fetch(url))) if via else (lambda: fetch(url))

    def names(self) -> list[str]:
        return list(self._fetch)

    def poll(self) -> None:
        for name, get in list(self._fetch.items()):
            try:
                values = parse_metrics(get())
            except (OSError, ValueError):
                continue  # gone (killed, partitioned): its last figures stand
            with self._lock:
                self.last[name] = values

    def baseline(self) -> None:
        self.poll()
        with self._lock:
            self.base = {name: dict(values) for name, values in self.last.items()}

    def start(self, every: float = 0.5) -> Proxies:
        def loop():
            while not self._stop.wait(every):
                self.poll()
        self._thread = threading.Thread(target=loop, daemon=True, name="scenario-metrics")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.poll()

    def total(self, sample: str, **labels: str) -> float:
        """Sum of `sample` over every proxy and every label set matching `labels`, since the baseline."""
        return sum(self.by(sample, None, **labels).values())

    def by(self, sample: str, label: str | None, **labels: str) -> dict[str, float]:
        """`sample` since the baseline, summed by the value of `label` (or all under "")."""
        out: dict[str, float] = defaultdict(float)
        with self._lock:
            for name, values in self.last.items():
                base = self.base.get(name, {})
                for (sname, items), value in values.items():
                    if sname != sample:
                        continue
                    d = dict(items)
                    if any(d.get(k) != v for k, v in labels.items()):
                        continue
                    delta = value - base.get((sname, items), 0.0)
                    if delta:
                        out[d.get(label, "") if label else ""] += delta
        return dict(out)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n·q/100)
    return ordered[int(rank) - 1]


def success(samples: Iterable[Sample]) -> tuple[int, int]:
    """(successful, all) requests."""
    samples = list(samples)
    return sum(1 for s in samples if s.ok), len(samples)


def rate_text(ok: int, n: int) -> str:
    return f"{100 * ok / n:.2f} % ({ok} of {n})" if n else "no requests"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


@dataclass
class Check:
    """One line of the SLO: what is promised, whether it held, what was measured."""

    what: str
    ok: bool
    got: str


@dataclass
class Report:
    name: str
    title: str
    mesh: str = ""  # what ran
    load: str = ""  # what the load was
    fault: str = ""  # what was done to the mesh, and when
    slo: str = ""  # the promise, in words
    samples: list[Sample] = field(default_factory=list)
    phases: list[tuple[str, float, float]] = field(default_factory=list)  # (name, from, to) wall times
    started: float = 0.0  # wall time the load started (offsets in the report are from here)
    proxies: Proxies | None = None
    figures: list[tuple[str, str]] = field(default_factory=list)  # scenario-specific figures
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, what: str, ok: bool, got: str) -> bool:
        self.checks.append(Check(what, bool(ok), got))
        return bool(ok)

    def check_success(self, what: str, samples: Iterable[Sample], least: float = 1.0) -> bool:
        """An SLO line on the share of `samples` that succeeded: at least `least` (1.0: every one of
        them; none at all fails)."""
        ok, n = success(samples)
        return self.check(what, n and ok / n >= least, rate_text(ok, n))

    def figure(self, name: str, value) -> None:
        self.figures.append((name, str(value)))

    def during(self, start: float, end: float = float("inf")) -> list[Sample]:
        """Samples whose request was sent in [start, end) (wall times)."""
        return [s for s in self.samples if start <= s.start < end]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def proxy_figures(self) -> list[tuple[str, str]]:
        p = self.proxies
        if p is None:
            return []

        def with_kinds(counts: dict[str, float]) -> str:
            total = int(sum(counts.values()))
            kinds = ", ".join(f"{k} {int(v)}" for k, v in sorted(counts.items()) if v)
            return f"{total}" + (f" ({kinds})" if kinds else "")

        return [
            ("retries", f"{int(p.total('mitmesh_retries_total'))}"),
            ("retries refused by the budget", f"{int(p.total('mitmesh_retry_budget_exhausted_total'))}"),
            ("breaker transitions", with_kinds({f"to {k}": v for k, v in
                                                p.by("mitmesh_breaker_transitions_total", "to").items()})),
            ("outlier ejections", f"{int(p.total('mitmesh_ejections_total'))}"),
            ("endpoints out of rotation", with_kinds(p.by("mitmesh_endpoint_unhealthy_total", "reason"))),
            ("upstream failures", with_kinds(p.by("mitmesh_upstream_failures_total", "kind"))),
        ]

    def render(self) -> str:
        t0 = self.started or (self.samples[0].start if self.samples else 0.0)
        lines = [f"scenario  {self.name}: {self.title}"]
        for label, text in (("mesh", self.mesh), ("load", self.load), ("fault", self.fault), ("SLO", self.slo)):
            if text:
                lines.append(f"{label:<9} {text}")
        lines += ["", f"{'phase':<44}{'requests':>9}{'success':>11}{'p50':>11}{'p99':>11}"]
        end = max((s.start for s in self.samples), default=t0) + 1
        for name, start, stop in [*self.phases, ("all", t0, end)]:
            part = self.during(start, stop)
            ok, n = success(part)
            lat = [s.latency for s in part if s.status]
            span = f" ({start - t0:.1f}–{min(stop, end) - t0:.1f} s)" if name != "all" else ""
            lines.append(f"{(name + span)[:43]:<44}{n:>9}{(f'{100 * ok / n:.2f} %' if n else '-'):>11}"
                         f"{ms(percentile(lat, 50)):>11}{ms(percentile(lat, 99)):>11}")
        failed = [s for s in self.samples if not s.ok]
        if failed:
            lines.append(f"failed requests: {len(failed)}; the first ones:")
            for s in failed[:5]:
                what = f"{s.status} {(s.body or {}).get('error') or ''}" if s.status else "no response"
                lines.append(f"  {s.start - t0:7.2f} s  {what}  {(s.reason or '')[:100]}")
        figures = self.proxy_figures()
        width = max((len(name) for name, _ in figures + self.figures), default=0) + 3
        if figures:
            lines += ["", f"proxies (/metrics of {', '.join(self.proxies.names())})"]
            lines += [f"  {name:<{width}}{value}" for name, value in figures]
        if self.figures:
            lines += ["", "observed"] + [f"  {name:<{width}}{value}" for name, value in self.figures]
        lines += ["", "SLO"]
        lines += [f"  {'PASS' if c.ok else 'FAIL'}  {c.what:<58} {c.got}" for c in self.checks]
        for note in self.notes:
            lines.append(f"note: {note}")
        lines += ["", f"{'PASS' if self.passed else 'FAIL'}  {self.name}"]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# running scenarios: `mitmesh scenario`


# the scenarios' folder, beside this one (in a checkout and in an installed distribution alike)
FOLDER = Path(__file__).resolve().parents[1] / "scenarios"


def _package():
    """The `scenarios` package, loaded from FOLDER by path (or the one already imported, when a
    scenario runs as `python -m scenarios.NAME`), so its modules import each other as usual."""
    found = sys.modules.get("scenarios")
    if found is not None:
        return found
    spec = importlib.util.spec_from_file_location(
        "scenarios", FOLDER / "__init__.py", submodule_search_locations=[str(FOLDER)])
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no scenarios folder at {FOLDER}")
    package = importlib.util.module_from_spec(spec)
    sys.modules["scenarios"] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules["scenarios"]
        raise
    return package


def names() -> tuple[str, ...]:
    return tuple(_package().ALL)


def pending() -> dict[str, str]:
    """Scenarios listed but not runnable yet: name → why."""
    return dict(getattr(_package(), "PENDING", {}))


def module(name: str):
    if name not in names():
        raise KeyError(name)
    return importlib.import_module(f"{_package().__name__}.{name.replace('-', '_')}")


def summary(name: str) -> str:
    if name in pending():
        return f"({pending()[name]})"
    return module(name).TITLE


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds: every finally block stops what it started


def isolation(asked: str = "auto") -> tuple[str, str | None]:
    """(pod | loopback, why not pods): auto is pod where pods can be made (root on Linux, nft), as
    `mitmesh up` decides; pod where they cannot is an error (Skip)."""
    from tools import pods
    why = None if asked == "loopback" else pods.why_not()
    if asked == "pod" and why:
        raise Skip(f"isolation pod is not possible here: {why}")
    return ("loopback" if asked == "loopback" or why else "pod"), why


def run_one(name: str, short: bool = False, keep: bool = False, out=None, isolation_mode: str = "auto") -> int:
    out = out or sys.stdout
    mod = module(name)
    try:
        mode, why = isolation(isolation_mode)
    except Skip as e:
        print(f"SKIP  {name}: {e}", file=out, flush=True)
        return SKIPPED
    workdir = Path(tempfile.mkdtemp(prefix=f"mitmesh-scenario-{name}-"))  # removed unless it failed or --keep
    if mode == "pod" and getattr(mod, "LOOPBACK_ONLY", None):  # a scenario that cannot run on pods says why
        mode, why = "loopback", mod.LOOPBACK_ONLY
    run = Run(name, short, workdir, out, mode)
    print(f"scenario {name} ({'short' if short else 'full'} run, isolation {mode}"
          + (f"; no pods: {why}" if why and mode == "loopback" and isolation_mode != "loopback" else "")
          + f"): {mod.TITLE}", file=out, flush=True)
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _terminate)
    code = FAIL
    try:
        report = mod.run(run)
    except Skip as e:
        print(f"\nSKIP  {name}: {e}", file=out, flush=True)
        code = SKIPPED
    except Exception:
        print(f"\n{traceback.format_exc()}FAIL  {name}: the scenario could not run", file=out, flush=True)
    else:
        print("\n" + report.render(), file=out, flush=True)
        code = PASS if report.passed else FAIL
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        if keep or code == FAIL:
            print(f"logs: {workdir}", file=out, flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


def cli(args: argparse.Namespace) -> int:
    if args.list or not args.names:
        for name in names():
            print(f"{name:<22} {summary(name)}")
        return 0 if args.list else 2
    runnable = [n for n in names() if n not in pending()]
    wanted = runnable if args.names == ["all"] else args.names
    unknown = [n for n in wanted if n not in names()]
    if unknown:
        print(f"mitmesh scenario: unknown scenario {', '.join(map(repr, unknown))}; "
              f"expected one of {', '.join(runnable)} or all", file=sys.stderr)
        return 2
    waiting = [n for n in wanted if n in pending()]
    if waiting:
        print("\n".join(f"mitmesh scenario: {n}: {pending()[n]}" for n in waiting), file=sys.stderr)
        return 2
    codes = []
    try:
        for name in wanted:
            codes.append(run_one(name, short=args.short, keep=args.keep,
                                 isolation_mode=getattr(args, "isolation", "auto")))
            if len(wanted) > 1:
                print(flush=True)
    except KeyboardInterrupt:  # run_one's finally blocks have stopped everything it started
        print("\nmitmesh scenario: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    if len(wanted) > 1:
        print("  ".join(f"{n}: {dict(((PASS, 'PASS'), (FAIL, 'FAIL'), (SKIPPED, 'SKIP')))[c]}"
                        for n, c in zip(wanted, codes)))
    if FAIL in codes:
        return FAIL
    return SKIPPED if all(c == SKIPPED for c in codes) else PASS


def main(name: str, argv: list[str] | None = None) -> int:
    """`python -m scenarios.NAME [--short] [--keep]`."""
    p = argparse.ArgumentParser(prog=f"python -m scenarios.{name.replace('-', '_')}")
    p.add_argument("--short", action="store_true")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--isolation", choices=["auto", "pod", "loopback"], default="auto")
    args = p.parse_args(argv)
    return run_one(name, short=args.short, keep=args.keep, isolation_mode=args.isolation)
