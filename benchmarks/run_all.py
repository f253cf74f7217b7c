"""Every benchmark, then one table of figures against targets, and docs/benchmarks.md with plots.

    python -m benchmarks.run_all [--quick] [--only latency,admission] [--docs-only]

Each benchmark runs as its own process (``python -m benchmarks.<name>``), so a crash or a
leaked thread stays in it; its output is shown live and kept in
``benchmarks/results/<name>.log``, its figures in ``benchmarks/results/<name>.json``. Every
run is bounded by a timeout, and the whole by a budget (``--budget``, default 14 minutes);
a benchmark that would not fit is skipped and says so. Afterwards this writes
``benchmarks/results/run_all.json`` and regenerates ``docs/benchmarks.md`` and its PNG plots
(``docs/img/``) from the JSON files.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import signal
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from benchmarks._common import RESULTS, machine, write_results

REPO: Final = Path(__file__).resolve().parents[1]
DOCS: Final = REPO / "docs"
IMG: Final = DOCS / "img"
TEMPLATES: Final = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class Spec:
    name: str
    full: list[str] = field(default_factory=list)
    quick: list[str] = field(default_factory=list)
    #: Upper bounds in seconds; the measured full run is well below.
    timeout_full: float = 300
    timeout_quick: float = 150
    owner: str = "latency/admission/footprint/run_all"


#: In order: the cheap, self-contained ones first; the control plane last.
BENCHMARKS: Final = (
    Spec("latency", [], ["--quick"], 240, 120),
    Spec("reader_impact", [], ["--quick"], 420, 180),
    Spec("interceptor", [], ["--quick"], 240, 120, owner="interceptor"),
    Spec("footprint", [], ["--quick"], 300, 120),
    Spec("lmdb", [], ["--quick"], 420, 240, owner="lmdb"),
    Spec("hydration", [], ["--sizes", "100000", "--repeat", "1", "--formats", "json,raw"],
         420, 150, owner="hydration/freshness"),
    Spec("freshness", ["--profile"], ["--rates", "100,1000", "--seconds", "3"], 300, 120,
         owner="hydration/freshness"),
    Spec("nats", [], ["--keys", "100000", "--repeat", "1", "--seconds", "3"], 300, 200,
         owner="nats"),
    Spec("admission", [], ["--quick"], 360, 150),
    Spec("controller_pass", [], ["--quick"], 300, 200, owner="operator"),
)  # fmt: skip


# -- running ------------------------------------------------------------------------------------


def _tee(stream: IO[bytes], log: IO[bytes]) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
        log.write(line)


def run_one(spec: Spec, quick: bool, timeout: float) -> dict[str, Any]:
    """Run ``python -m benchmarks.<name>``; SIGINT on timeout (its clean-up runs), then kill
    its process group (only what it started: it is the leader of a new session)."""
    argv = [sys.executable, "-m", f"benchmarks.{spec.name}", *(spec.quick if quick else spec.full)]
    print(f"\n=== {' '.join(argv[1:])} (timeout {timeout:.0f} s)", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with (RESULTS / f"{spec.name}.log").open("wb") as log:
        proc = subprocess.Popen(
            argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert proc.stdout is not None
        reader = threading.Thread(target=_tee, args=(proc.stdout, log), daemon=True)
        reader.start()
        status = "ok"
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            status = "timeout"
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        reader.join(10)
    if status == "ok" and proc.returncode != 0:
        status = f"failed (exit {proc.returncode})"
    seconds = time.monotonic() - started
    result = RESULTS / f"{spec.name}.json"
    fresh = result.is_file() and result.stat().st_mtime >= time.time() - seconds - 1
    if status == "ok" and not fresh:
        status = "no results written"
    print(f"=== {spec.name}: {status} in {seconds:.0f} s", flush=True)
    return {"status": status, "seconds": round(seconds, 1), "argv": argv[1:], "fresh": fresh}


# -- figures ------------------------------------------------------------------------------------


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def figures_of(name: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    """A benchmark's rows: those its run wrote, else its module's ``figures(results)``."""
    if isinstance(data.get("figures"), list):
        return list(data["figures"])
    module = importlib.import_module(f"benchmarks.{name}")
    derive = getattr(module, "figures", None)
    return list(derive(data)) if derive is not None else []


def verdict(met: bool | None) -> str:
    return {True: "met", False: "**SHORT**", None: ""}[met]


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def print_table(rows: list[tuple[str, dict[str, Any]]]) -> None:
    width = max((len(f["figure"]) for _, f in rows), default=10)
    print(f"\n{'benchmark':<14} {'figure':<{width}} {'value':>18}  {'ratio':>7}  "
          f"{'target':<24} verdict")  # fmt: skip
    for name, f in rows:
        value = f"{fmt(f['value'])} {f['unit']}"
        print(
            f"{name:<14} {f['figure']:<{width}} {value:>18}  {fmt(f['ratio']):>7}  "
            f"{f['target']:<24} {verdict(f['met']).replace('*', '')}"
        )
        print(f"{'':<14} {'  baseline: ' + f['baseline']}")


# -- plots --------------------------------------------------------------------------------------


def _plot_latency(lat: dict[str, Any], plt: Any) -> Any:
    py = lat["python"]
    names = list(py)
    kinds = [("get", "GET"), ("request_10_gets", "10 GETs"), ("request_mget_10", "MGET 10")]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(kinds)
    for i, (kind, label) in enumerate(kinds):
        xs = [j + i * width for j in range(len(names))]
        p50 = [py[n][kind]["p50_us"] for n in names]
        p99 = [py[n][kind]["p99_us"] for n in names]
        ax.bar(xs, p50, width, label=f"{label} p50")
        ax.scatter(xs, p99, marker="_", s=200, color="black", zorder=3)
    c = lat["redis_benchmark"]
    centre = [j + width for j in range(len(names))]
    bench_p50 = [c[n]["get"]["p50_us"] for n in names]
    ax.scatter(centre, bench_p50, marker="*", s=80, color="red", zorder=4,
               label="redis-benchmark GET p50")  # fmt: skip
    ax.set_xticks([j + width for j in range(len(names))], names)
    ax.set_yscale("log")
    ax.set_ylabel("µs per GET / per request (log); ticks = p99")
    ax.set_title("Look-ups: Unix socket vs TCP vs remote (redis-py + hiredis)")
    ax.legend(fontsize=8)
    return fig


def _plot_reader_impact(ri: dict[str, Any], plt: Any) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4))
    placements = ri.get("placements") or {"": {"idle": ri["idle"], "hydrating": ri["hydrating"]}}
    for name, summary in placements.items():
        where = f"{name}, " if name else ""
        style = "-" if name == ri.get("judged_placement", name) else ":"
        series = [(f"{where}idle", summary["idle"])] + [
            (f"{where}hydrating, batch {b}", s) for b, s in summary["hydrating"].items()
        ]
        for label, values in series:
            quantiles = values.get("quantiles_ms", {})
            if quantiles:
                ax.plot([float(q) * 100 for q in quantiles], list(quantiles.values()),
                        marker="o", linestyle=style, label=label)  # fmt: skip
    ax.axhline(1.0, color="red", linestyle="--", label="target p99 1 ms")
    ax.set_yscale("log")
    ax.set_xlabel("percentile")
    ax.set_ylabel("app GET latency, ms (log)")
    ax.set_title("App reads over the socket while the hydrator bootstraps")
    ax.legend(fontsize=7)
    return fig


def _plot_footprint(fp: dict[str, Any], plt: Any) -> Any:
    runs = fp["runs"]
    labels = [f"{r['keys']:,} keys" for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4))
    redis_rss = [r["redis"]["rss_mib"] for r in runs]
    hyd_rss = [r["hydrator"]["rss_mib"] for r in runs]
    ax.bar(labels, redis_rss, label="Redis RSS")
    ax.bar(labels, hyd_rss, bottom=redis_rss, label="hydrator RSS")
    ax.scatter(labels, [r["together_pss_mib"] for r in runs], marker="D", color="black",
               zorder=3, label="PSS together")  # fmt: skip
    ax.axhline(40, color="red", linestyle="--", label="idle target 40 MiB")
    ax.set_ylabel("MiB")
    ax.set_title("Sidecars' memory")
    ax.legend(fontsize=8)
    return fig


def _plot_admission(adm: dict[str, Any], plt: Any) -> Any:
    runs = adm["runs"]
    levels = sorted({r["concurrency"] for r in runs})
    fig, ax = plt.subplots(figsize=(7, 4))
    for offset, webhook in ((-0.2, False), (0.2, True)):
        got = {r["concurrency"]: r["create"] for r in runs if r["webhook"] == webhook}
        xs = [i + offset for i, c in enumerate(levels) if c in got]
        ys = [got[c]["p50_ms"] for c in levels if c in got]
        label = "with webhook" if webhook else "without"
        ax.bar(xs, ys, 0.4, label=f"{label} p50")
        ax.scatter(xs, [got[c]["p99_ms"] for c in levels if c in got], marker="_", s=300,
                   color="black", zorder=3)  # fmt: skip
    ax.set_xticks(range(len(levels)), [f"{c} concurrent" for c in levels])
    ax.set_yscale("log")
    ax.set_ylabel("Pod create, ms (log); ticks = p99")
    ax.set_title("Admission through the real apiserver")
    ax.legend(fontsize=8)
    return fig


def _plot_hydration(hy: dict[str, Any], plt: Any) -> Any:
    if not hy.get("runs"):
        return None
    runs = hy["runs"]
    labels = [f"{r['keys'] // 1000}k {r['format']}" for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4))
    positions = list(range(len(runs)))
    rates = [r["hydration_records_per_s"] / 1e3 for r in runs]
    ax.bar([x - 0.2 for x in positions], rates, 0.4, label="hydrator")
    ax.bar([x + 0.2 for x in positions], [r["mset_keys_per_s"] / 1e3 for r in runs], 0.4,
           label="raw MSET (baseline)")  # fmt: skip
    ax.axhline(200, color="red", linestyle="--", label="target 200k rec/s")
    ax.set_xticks(positions, labels)
    ax.set_ylabel("thousand records/s")
    ax.set_title("Bootstrap from a compacted topic")
    ax.legend(fontsize=8)
    return fig


def _plot_freshness(fr: dict[str, Any], plt: Any) -> Any:
    if not fr.get("runs"):
        return None
    runs = fr["runs"]
    rates = [r["rate"] for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        ax.plot(rates, [r[key] for r in runs], marker="o", label=f"visible {label}")
        ax.plot(rates, [r["kafka_floor_" + key] for r in runs], marker="x", linestyle=":",
                label=f"Kafka floor {label}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("records/s")
    ax.set_ylabel("produce -> visible, ms (log)")
    ax.set_title("Freshness")
    ax.legend(fontsize=8)
    return fig


#: One plot per benchmark that has one: its results -> a matplotlib figure (or None).
PLOTS: Final[dict[str, Callable[[dict[str, Any], Any], Any]]] = {
    "latency": _plot_latency,
    "reader_impact": _plot_reader_impact,
    "footprint": _plot_footprint,
    "admission": _plot_admission,
    "hydration": _plot_hydration,
    "freshness": _plot_freshness,
}


def plots(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """PNG plots of whatever results exist; returns benchmark -> image path (docs-relative)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    for name, plot in PLOTS.items():
        data = results.get(name)
        fig = plot(data, plt) if data is not None else None
        if fig is None:
            continue
        fig.tight_layout()
        fig.savefig(IMG / f"{name}.png", dpi=110)
        plt.close(fig)
        made[name] = f"img/{name}.png"
    return made


# -- the document -------------------------------------------------------------------------------


def note(which: str, /, **values: Any) -> str:
    """One shortfall note: ``benchmarks/templates/shortfalls/<which>.md`` filled in."""
    return "\n".join(template(f"shortfalls/{which}", **values))


def _latency_notes(lat: dict[str, Any]) -> list[str]:
    notes = []
    uds, c = lat["python"]["uds"], lat["redis_benchmark"]["uds"]
    ratios = lat["ratios"]["get_p50_over_redis_benchmark_uds_p50"]
    prof = lat.get("profile_redis_py_get_uds", {})
    if ratios["get"] > 1.5:
        notes.append(note(
            "latency_lookup", get_ratio=ratios["get"],
            raw_p50=uds["raw_socket_prepacked"]["p50_us"],
            raw_ratio=ratios.get("raw_socket_prepacked"),
            hiredis_p50=uds["hiredis_on_socket"]["p50_us"],
            send_read_p50=uds["redis_py_connection_send_read"]["p50_us"],
            get_p50=uds["get"]["p50_us"], c_get_p50=c["get"]["p50_us"],
            calls_per_get=prof.get("python_functions_per_get"),
            send_read_ratio=ratios.get("redis_py_connection_send_read"),
            single_ratio=ratios.get("redis_py_single_connection"),
        ))  # fmt: skip
    remote = lat["ratios"].get("remote-0.25ms_over_uds", {}).get("request_10_gets")
    if remote is not None and remote["p50"] < 10:
        notes.append(note(
            "latency_remote", remote_p50=remote["p50"], get_p50=uds["get"]["p50_us"],
            c_ratio=lat["ratios"]["redis_benchmark_remote-0.25ms_over_uds"]["get"]["p50"],
            mget=lat["ratios"]["remote-0.25ms_10_gets_over_uds_mget"],
        ))  # fmt: skip
    return notes


def _reader_impact_notes(ri: dict[str, Any]) -> list[str]:
    rows = [f for f in ri["figures"] if f["met"] is False]
    if not rows:
        return []
    exec_max = {
        r["bootstrap_batch_max_keys"]: r["redis_latency_histograms"]
        .get("exec", {})
        .get("max_bucket_usec")
        for r in ri["runs"]
    }
    exec_text = ", ".join(f"{us:,} µs at batch {b}" for b, us in exec_max.items())
    judged = ri.get("judged_placement", "bare")
    context = [f for f in ri["figures"] if f["met"] is None and "bare" in f["figure"]]
    cpu = sorted(
        r["hydrator_cpu_seconds"]
        for r in ri["runs"]
        if r.get("placement", "bare") == judged and r.get("hydrator_cpu_seconds") is not None
    )
    windows = sorted(r["window_seconds"] for r in ri["runs"])
    return [note(
        "reader_impact", value=rows[0]["value"], ratio=rows[0]["ratio"],
        idle_p99_ms=ri["idle"]["p99_ms"], idle_p50_ms=ri["idle"]["p50_ms"], exec_text=exec_text,
        placement=judged, bare_value=context[0]["value"] if context else "(not measured)",
        bare_ratio=context[0]["ratio"] if context else "",
        hydrator_cpu=f"{cpu[0]} to {cpu[-1]} s" if cpu else "?",
        windows=f"{windows[0]} to {windows[-1]} s" if windows else "?",
    )]  # fmt: skip


def _freshness_notes(fr: dict[str, Any]) -> list[str]:
    short = [f for f in figures_of("freshness", fr) if f["met"] is False]
    if not short:
        return []
    at_1k = next((r for r in fr.get("runs", []) if r["rate"] == 1000), None)
    if at_1k is None or "ratios" not in at_1k:
        listed = "; ".join(f"{f['figure']}: {fmt(f['value'])} {f['unit']}" for f in short)
        where = "a bare aiokafka consumer's receive latency (the Kafka floor)"
        return [note("other", name="freshness", listed=listed, where=where)]
    ratios = at_1k["ratios"]
    prof = fr.get("hydrator_profile_at_1k") or {}
    own = "; ".join(
        f"{p['function'].split(' (')[0]} {p['share']:.0%}" for p in prof.get("top_own", [])[:6]
    )
    inclusive = prof.get("top_inclusive", [])
    fetching = next((p["share"] for p in inclusive if "_proc_fetch_request" in p["function"]), None)
    repeats = ", ".join(
        f"x{r['p50_over_kafka_floor']} / x{r['p99_over_kafka_floor']}"
        for r in at_1k.get("repeats", [])
    )
    writes = {}
    for line in fr.get("hydrator_writes", []):
        name, _, value = line.partition(" ")
        writes[name.split("{")[0]] = float(value)
    count = writes.get("sidecar_state_hydrator_batch_apply_seconds_count") or 0.0
    seconds = writes.get("sidecar_state_hydrator_batch_apply_seconds_sum", 0.0)
    records = writes.get("sidecar_state_hydrator_records_applied_total", 0.0)
    apply_ms = f"{1000 * seconds / count:.1f}" if count else "?"
    per_write = f"{records / count:.1f}" if count else "?"
    return [note(
        "freshness", p50=at_1k["p50_ms"], p99=at_1k["p99_ms"],
        apply_ms=apply_ms, per_write=per_write,
        fetching=f"{fetching:.0%}" if fetching is not None else "?",
        rates=", ".join(f"{r['rate']:,}" for r in fr.get("runs", [])),
        floor_p50=at_1k["kafka_floor_p50_ms"], floor_p99=at_1k["kafka_floor_p99_ms"],
        r50=ratios["p50_over_kafka_floor"], r99=ratios["p99_over_kafka_floor"],
        in_process_r50=ratios.get("p50_over_kafka_floor_in_process"),
        in_process_r99=ratios.get("p99_over_kafka_floor_in_process"),
        repeats=repeats or "one run", own=own or "(not profiled: run with --profile)",
        load=", ".join(f"{x:.1f}" for x in fr.get("load_average_before", [])) or "unknown",
    )]  # fmt: skip


def _interceptor_notes(ic: dict[str, Any]) -> list[str]:
    if not any(f["met"] is False for f in ic["figures"]):
        return []
    sc = ic["scenarios"]
    return [note("interceptor", interceptor_p50=sc["interceptor-1"]["p50_ms"],
                 envoy_p50=sc["envoy"]["p50_ms"],
                 authorizer_p50=sc["authorizer-1"]["p50_ms"])]  # fmt: skip


def _footprint_notes(fp: dict[str, Any]) -> list[str]:
    if fp.get("targets", {}).get("met") is not False:
        return []
    idle = next(r for r in fp["runs"] if r["keys"] == 0)
    profile = fp.get("hydrator_import_profile", [])
    steps = ", ".join(
        f"{s['step']} +{s['added_mib']}" for s in profile if s["added_mib"] is not None
    )
    added = {s["step"]: s["added_mib"] for s in profile}
    together, target = idle["together_rss_mib"], fp["targets"]["idle_together_rss_mib"]
    return [note(
        "footprint", together_rss=together, redis_rss=idle["redis"]["rss_mib"],
        redis_file=idle["redis"]["rss_file_mib"], redis_pss=idle["redis"]["pss_mib"],
        hydrator_rss=idle["hydrator"]["rss_mib"], steps=steps,
        together_pss=idle["together_pss_mib"],
        hydrator_target=f"{fp['targets']['idle_hydrator_rss_mib']:.0f}",
        together_verdict=f"{'within' if together <= target else 'over'} the {target:.0f} MiB"
        " target",
        python_mib=profile[0]["rss_mib"] if profile else "?", ssl_mib=added.get("ssl", "?"),
        asyncio_mib=added.get("asyncio", "?"), aiokafka_mib=added.get("aiokafka", "?"),
        bytecode=fp["parameters"].get("bytecode", "the hydrator's package compiled at each start"),
    )]  # fmt: skip


def _admission_notes(adm: dict[str, Any]) -> list[str]:
    """Written by the benchmark itself, from its profiles (benchmarks.admission)."""
    from benchmarks.admission import shortfall_notes  # the kubernetes client, only here

    return shortfall_notes(adm)


def _nats_notes(nats: dict[str, Any]) -> list[str]:
    notes: list[str] = []
    boot = nats.get("bootstrap") or {}
    if boot.get("met") is False:
        cpu, bare_cpu = boot["hydrator_cpu_us_per_record"], boot.get("bare_cpu_us_per_record")
        if bare_cpu is not None and cpu <= bare_cpu:
            lever = (
                "With less CPU per record than the bare consumer, what is left is waiting: "
                "next lever, more of the bucket asked for at once during bootstrap (two pull "
                "requests of a batch are open now), or the decode and write of a batch moved "
                "off the core that reads."
            )
        else:
            lever = (
                "Next lever: the decode and the batch (`records.py`, `batch.py`) per record, "
                "then the same benchmark on a machine that is not shared."
            )
        notes.append(note(
            "nats", ratio=boot["ratio_to_bare"], cpu=cpu, bare_cpu=fmt(bare_cpu) or "?",
            load=fmt(boot.get("uptime_load_1m")) or "?", lever=lever,
            top="; ".join(boot.get("profile_top_tottime", [])[1:6]),
        ))  # fmt: skip
    fresh = nats.get("freshness") or {}
    if fresh.get("met") is False:
        notes.append(note(
            "nats_freshness", rate=f"{fresh['rate']:,}", p50=fresh["p50_ms"],
            p99=fresh["p99_ms"], bare_p50=fresh["bare_p50_ms"], bare_p99=fresh["bare_p99_ms"],
            ratio=fresh["p99_ratio"], load=fmt(fresh.get("uptime_load_1m")) or "?",
            write_ms=fmt(fresh.get("write_ms_avg")) or "?",
            per_write=fmt(fresh.get("records_per_write")) or "?",
            cpu=fmt(fresh.get("hydrator_cpu_us_per_record")) or "?",
        ))  # fmt: skip
    return notes


#: Where a figure of a benchmark without its own notes is measured against.
_BASELINES: Final = {
    "hydration": "raw MSET rate and a bare aiokafka consumer's rate",
}

#: Per benchmark, why its figures that miss their target miss it (from its profiles).
NOTES: Final[dict[str, Callable[[dict[str, Any]], list[str]]]] = {
    "latency": _latency_notes,
    "reader_impact": _reader_impact_notes,
    "freshness": _freshness_notes,
    "interceptor": _interceptor_notes,
    "footprint": _footprint_notes,
    "admission": _admission_notes,
    "nats": _nats_notes,
}


def shortfalls(results: dict[str, dict[str, Any]]) -> list[str]:
    """Why each figure that misses its target misses it, from the profiles in the results."""
    notes: list[str] = []
    for name, explain in NOTES.items():
        data = results.get(name)
        if data is not None:
            notes += explain(data)
    for name, where in _BASELINES.items():
        data = results.get(name)
        if data is None:
            continue
        short = [f for f in figures_of(name, data) if f["met"] is False]
        if short:
            listed = "; ".join(f"{f['figure']}: {fmt(f['value'])} {f['unit']}" for f in short)
            which = name if (TEMPLATES / "shortfalls" / f"{name}.md").exists() else "other"
            notes.append(note(which, name=name, listed=listed, where=where))
    return notes


def template(name: str, /, **values: Any) -> list[str]:
    """The lines of ``benchmarks/templates/<name>.md`` with ``$names`` filled in: the prose of
    docs/benchmarks.md lives there, the figures come from the results."""
    text = (TEMPLATES / f"{name}.md").read_text()
    return string.Template(text).substitute(values).removesuffix("\n").split("\n")


def write_docs(
    results: dict[str, dict[str, Any]],
    rows: list[tuple[str, dict[str, Any]]],
    images: dict[str, str],
    summary: dict[str, Any],
) -> Path:
    m = summary["machine"]
    lines = template(
        "benchmarks", quick_flag=" --quick" if summary["quick"] else "",
        finished=summary["finished"], kind="quick" if summary["quick"] else "full",
        wall_seconds=f"{summary['wall_seconds']:.0f}", nproc=m["nproc"], cpu=m["cpu"],
        python=m["python"], redis_server=m["redis_server"].split(" sha")[0], kafka=m["kafka"],
        redis=m["redis"], hiredis=m["hiredis"], aiokafka=m["aiokafka"],
    )  # fmt: skip
    for name, f in rows:
        value = f"{fmt(f['value'])} {f['unit']}"
        figure = f["figure"].strip()
        lines.append(
            f"| {name} | {figure} | {value} | {f['baseline']} | {fmt(f['ratio'])} "
            f"| {f['target']} | {verdict(f['met'])} |"
        )
    lines += ["", "Runs:", ""]
    for run in summary["benchmarks"].values():
        lines.append(f"- `python {' '.join(run['argv'])}`: {run['status']}, {run['seconds']} s")
    earlier = sorted(set(results) - set(summary["benchmarks"]))
    if earlier:
        lines.append(f"- from an earlier run (not re-run this time): {', '.join(earlier)}")
    notes = shortfalls(results)
    if notes:
        lines += ["", "## What falls short, why, and what would fix it", ""]
        lines += [f"- {note}" for note in notes]
    lines += ["", "## Method and plots", ""]
    lines += method_sections(results, images)
    DOCS.mkdir(parents=True, exist_ok=True)
    path = DOCS / "benchmarks.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _latency_section(lat: dict[str, Any]) -> list[str]:
    net = lat.get("network", {})
    achieved = {k: v.get("achieved_added_rtt_ms") for k, v in net.get("delays", {}).items()}
    out = template("latency", delay=lat["parameters"]["delay"],
                   netem_probe=lat["parameters"]["netem_probe"], achieved=achieved)  # fmt: skip
    for name, row in lat["python"].items():
        c = lat["redis_benchmark"][name]["get"]
        out.append(
            f"| {name} | {row['get']['p50_us']} / {row['get']['p99_us']} | "
            f"{row['request_10_gets']['p50_us']} / {row['request_10_gets']['p99_us']} | "
            f"{row['request_mget_10']['p50_us']} / {row['request_mget_10']['p99_us']} | "
            f"{c['p50_us']} / {c['p99_us']} |"
        )
    return out


def _reader_impact_section(ri: dict[str, Any]) -> list[str]:
    cpu = ri.get("cpu_groups") or {}
    pod = cpu.get("pod_millicores") or {}
    requests = ", ".join(
        f"{name} {m['request']}m" + (f" (limit {m['limit']}m)" if m.get("limit") else "")
        for name, m in pod.items()
    )
    if cpu.get("available"):
        placement = (
            f"In the judged runs the app, Redis and the hydrator each run in a CPU cgroup "
            f"(cgroup {cpu.get('version')}) weighted as the Pod's requests ({requests}), in a "
            f"Pod cgroup beside the broker's ({cpu.get('broker_millicores')}m), as the kubelet "
            f"places containers; the same processes bare (no cgroups) are context."
        )
    elif cpu:
        placement = f"No CPU cgroups here ({cpu.get('why')}): bare processes only."
    else:
        placement = "Bare processes (no cgroups)."
    out = template("reader_impact", records=f"{ri['parameters']['records']:,}",
                   app_reads_per_s=ri["parameters"]["app_reads_per_s"], placement=placement,
                   idle_p50_ms=ri["idle"]["p50_ms"], idle_p99_ms=ri["idle"]["p99_ms"])  # fmt: skip
    for name, summary in (ri.get("placements") or {}).items():
        idle = summary["idle"]
        out.append(f"- {name}, idle: GET p50/p99 {idle['p50_ms']} / {idle['p99_ms']} ms")
    for run in ri["runs"]:
        g = run["gets_during"]
        cpu_s = run.get("hydrator_cpu_seconds")
        out.append(
            f"- {run.get('placement', 'bare')}, batch {run['bootstrap_batch_max_keys']}: "
            f"{run['hydration_records_per_s']:,} rec/s over {run['window_seconds']} s"
            + (f" (hydrator {cpu_s} s of CPU)" if cpu_s is not None else "")
            + f"; app GET p50/p99/max {g['p50_ms']} / {g['p99_ms']} / {g['max_ms']} ms "
            f"(n={g['n']})"
        )
    return out


def _freshness_section(fr: dict[str, Any]) -> list[str]:
    out = template("freshness")
    for run in fr.get("runs", []):
        r = run.get("ratios") or {}
        repeats = "; ".join(
            f"x{x.get('p50_over_kafka_floor')} / x{x.get('p99_over_kafka_floor')}"
            for x in run.get("repeats", [])
        )
        out.append(
            f"- {run['rate']:,} rec/s ({run['records']:,} records): visible p50/p99 "
            f"{run['p50_ms']} / {run['p99_ms']} ms; floor as observed "
            f"{run['kafka_floor_p50_ms']} / {run['kafka_floor_p99_ms']} ms"
            + (
                f", in the consumer's process {run['kafka_floor_in_process_p50_ms']} / "
                f"{run['kafka_floor_in_process_p99_ms']} ms "
                f"(x{r.get('p50_over_kafka_floor_in_process')} / "
                f"x{r.get('p99_over_kafka_floor_in_process')})"
                if "kafka_floor_in_process_p50_ms" in run
                else ""
            )
            + (f"; per run {repeats}" if repeats else "")
        )
    return out


def _footprint_section(fp: dict[str, Any]) -> list[str]:
    out = template("footprint")
    for r in fp["runs"]:
        out.append(
            f"| {r['keys']:,} | {r['redis']['rss_mib']} / {r['redis']['pss_mib']} | "
            f"{r['redis_used_memory_mib']} | {r['hydrator']['rss_mib']} / "
            f"{r['hydrator']['pss_mib']} / {r['hydrator']['peak_rss_mib']} | "
            f"{r['together_rss_mib']} / {r['together_pss_mib']} |"
        )
    return out


def _admission_section(adm: dict[str, Any]) -> list[str]:
    out = template("admission")
    for r in adm["runs"]:
        call = r.get("apiserver_webhook_call", {})
        handler = r.get("operator_handler", {})
        waits = r.get("runqueue_wait_ms_per_pod", {})
        cpu = ", ".join(
            f"{k} {v}" + (f" (waited {waits[k]})" if k in waits else "")
            for k, v in r.get("cpu_ms_per_pod", {}).items()
        )
        out.append(
            f"| {r['concurrency']} | {'on' if r['webhook'] else 'off'} | "
            f"{r['create']['p50_ms']} / {r['create']['p99_ms']} | "
            f"{call.get('p50_ms_interpolated', '')} / {call.get('p99_ms_interpolated', '')} "
            f"| {handler.get('p99_ms_interpolated', '')} "
            f"| {fmt(r.get('webhook_calls_per_pod'))} "
            f"| {fmt(r.get('webhook_connections_per_pod'))} | {cpu} |"
        )
    return out


def _nats_section(nats: dict[str, Any]) -> list[str]:
    boot, fresh = nats["bootstrap"], nats["freshness"]
    return template(
        "nats",
        nats_server=nats["machine"].get("nats_server"),
        nats_py=nats["machine"].get("nats_py"),
        keys=f"{boot['keys']:,}",
        format=boot["format"],
        hydrator=f"{boot['hydration_records_per_s']:,}",
        bare=f"{boot['bare_ordered_consumer_records_per_s']:,}",
        ratio=boot["ratio_to_bare"],
        cpu=boot["hydrator_cpu_us_per_record"],
        bare_cpu=fmt(boot.get("bare_cpu_us_per_record")) or "?",
        rate=f"{fresh['rate']:,}",
        seconds=fresh["records"] // max(1, fresh["rate"]),
        p50=fresh["p50_ms"],
        p99=fresh["p99_ms"],
        bare_p50=fresh["bare_p50_ms"],
        bare_p99=fresh["bare_p99_ms"],
    )


def _controller_pass_section(cp: dict[str, Any]) -> list[str]:
    parameters = cp["parameters"]
    out = template("controller_pass", pods=f"{parameters['pods']:,}",
                   window=f"{parameters['window_seconds']:g}")  # fmt: skip
    for pods, sample in ((0, cp.get("empty")), (parameters["pods"], cp.get("loaded"))):
        if sample is not None:
            cpu_ms = sample["cpu_seconds_per_pass"] * 1000
            out.append(
                f"| {pods:,} | {sample['passes']:.0f} | {cpu_ms:.0f} | {sample['rss_mib']} |"
            )
    return out


#: The method sections, in the document's order: a benchmark with a section function gets its
#: prose (a template) and its table; every one with a plot gets the plot.
SECTIONS: Final[dict[str, Callable[[dict[str, Any]], list[str]] | None]] = {
    "latency": _latency_section,
    "reader_impact": _reader_impact_section,
    "footprint": _footprint_section,
    "admission": _admission_section,
    "hydration": None,
    "freshness": _freshness_section,
    "nats": _nats_section,
    "controller_pass": _controller_pass_section,
}


def method_sections(results: dict[str, dict[str, Any]], images: dict[str, str]) -> list[str]:
    out: list[str] = []
    for name, section in SECTIONS.items():
        data = results.get(name)
        if section is not None and data is not None:
            out += [*section(data), ""]
        if name in images:
            if section is None:
                out += [f"### {name.capitalize()} (`benchmarks/{name}.py`)", ""]
            out += [f"![{name.replace('_', ' ')}]({images[name]})", ""]
    return out


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all")
    parser.add_argument("--quick", action="store_true", help="smaller runs (a few minutes)")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--budget", type=float, default=14 * 60, help="seconds for everything")
    parser.add_argument("--docs-only", action="store_true", help="regenerate docs from JSON")
    args = parser.parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget
    only = {n for n in args.only.split(",") if n}
    runs: dict[str, dict[str, Any]] = {}
    if not args.docs_only:
        with contextlib.suppress(Exception):  # fetch the jars now, not inside a timed run
            from sidecar_state_stack.kafka_broker import install_kafka

            install_kafka()
        for spec in BENCHMARKS:
            if only and spec.name not in only:
                continue
            if not (REPO / "benchmarks" / f"{spec.name}.py").is_file():
                runs[spec.name] = {"status": "absent", "seconds": 0,
                                   "argv": ["-m", f"benchmarks.{spec.name}"]}  # fmt: skip
                continue
            timeout = min(spec.timeout_quick if args.quick else spec.timeout_full,
                          deadline - time.monotonic() - 20)  # fmt: skip
            if timeout < 30:
                runs[spec.name] = {"status": "skipped (budget)", "seconds": 0,
                                   "argv": ["-m", f"benchmarks.{spec.name}"]}  # fmt: skip
                continue
            runs[spec.name] = run_one(spec, args.quick, timeout)
    # Every benchmark's latest results go into the document, also those not run this time.
    results = {spec.name: data for spec in BENCHMARKS if (data := load(spec.name)) is not None}
    rows = [(name, f) for name, data in results.items() for f in figures_of(name, data)]
    print_table(rows)
    images = plots(results)
    wall = time.monotonic() - started
    summary = {
        "benchmark": "run_all",
        "machine": machine(),
        "quick": args.quick,
        "finished": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_seconds": round(wall, 1),
        "benchmarks": runs,
        "figures": [{"benchmark": name, **f} for name, f in rows],
        "short": [f"{name}: {f['figure'].strip()}" for name, f in rows if f["met"] is False],
    }
    previous = load("run_all")
    if args.docs_only and previous is not None:  # describe the last real run, not this one
        for key in ("quick", "finished", "wall_seconds", "benchmarks"):
            summary[key] = previous.get(key, summary[key])
    if not args.docs_only:
        write_results("run_all", summary)
    doc = write_docs(results, rows, images, summary)
    failed = [n for n, r in runs.items() if r["status"] not in ("ok", "absent")]
    print(f"\nwrote {doc} and {len(images)} plots; total {wall:.0f} s"
          + (f"; not ok: {failed}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
