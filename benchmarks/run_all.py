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
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from benchmarks._common import RESULTS, machine, write_results

REPO: Final = Path(__file__).resolve().parents[1]
DOCS: Final = REPO / "docs"
IMG: Final = DOCS / "img"


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
    Spec("reader_impact", [], ["--quick"], 240, 120),
    Spec("interceptor", [], ["--quick"], 240, 120, owner="interceptor"),
    Spec("footprint", [], ["--quick"], 300, 120),
    Spec("lmdb", [], ["--quick"], 420, 240, owner="lmdb"),
    Spec("hydration", [], ["--sizes", "100000", "--repeat", "1", "--formats", "json,raw"],
         420, 150, owner="hydration/freshness"),
    Spec("freshness", [], ["--rates", "100,1000", "--seconds", "3"], 240, 120,
         owner="hydration/freshness"),
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


def hydration_figures(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for run in data.get("runs", []):
        rows.append(
            {
                "figure": f"hydration of {run['keys']:,} keys ({run['format']})",
                "value": run["hydration_records_per_s"],
                "unit": "rec/s",
                "baseline": f"raw MSET {run['mset_keys_per_s']:,} keys/s; bare consumer "
                f"{run['bare_consumer_records_per_s']:,} rec/s",
                "ratio": run["ratio_to_mset"],
                "target": ">= 200,000 rec/s",
                "met": run["meets_rate_target"],
            }
        )
        if run["keys"] >= 1_000_000:
            rows.append(
                {
                    "figure": f"  {run['keys']:,} keys ({run['format']}) hydrated in",
                    "value": run["hydration_seconds"],
                    "unit": "s",
                    "baseline": f"raw MSET of the same keys "
                    f"{run['keys'] / run['mset_keys_per_s']:.2f} s",
                    "ratio": round(
                        run["hydration_seconds"] * run["mset_keys_per_s"] / run["keys"], 2
                    ),
                    "target": "< 10 s",
                    "met": run["hydration_seconds"] < 10,
                }
            )
    return rows


def freshness_figures(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for run in data.get("runs", []):
        gate = run["rate"] == 1000
        rows.append(
            {
                "figure": f"produce -> visible at {run['rate']:,} rec/s, p50 / p99",
                "value": f"{run['p50_ms']} / {run['p99_ms']}",
                "unit": "ms",
                "baseline": f"Kafka floor (bare consumer) {run['kafka_floor_p50_ms']} / "
                f"{run['kafka_floor_p99_ms']} ms",
                "ratio": round(run["p50_ms"] / run["kafka_floor_p50_ms"], 2)
                if run["kafka_floor_p50_ms"]
                else None,
                "target": "p50 <= 5, p99 <= 20 ms" if gate else "(context)",
                "met": (run["p50_ms"] <= 5 and run["p99_ms"] <= 20) if gate else None,
            }
        )
    return rows


def figures_of(name: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    if isinstance(data.get("figures"), list):
        return list(data["figures"])
    if name == "hydration":
        return hydration_figures(data)
    if name == "freshness":
        return freshness_figures(data)
    return []


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


def plots(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """PNG plots of whatever results exist; returns benchmark -> image path (docs-relative)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(IMG / f"{name}.png", dpi=110)
        plt.close(fig)
        made[name] = f"img/{name}.png"

    if (lat := results.get("latency")) is not None:
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
        save(fig, "latency")

    if (ri := results.get("reader_impact")) is not None:
        fig, ax = plt.subplots(figsize=(7, 4))
        series = [("idle", ri["idle"])] + [
            (f"hydrating, batch {b}", s) for b, s in ri.get("hydrating", {}).items()
        ]
        for label, summary in series:
            quantiles = summary.get("quantiles_ms", {})
            if quantiles:
                ax.plot([float(q) * 100 for q in quantiles], list(quantiles.values()), marker="o",
                        label=label)  # fmt: skip
        ax.axhline(1.0, color="red", linestyle="--", label="target p99 1 ms")
        ax.set_yscale("log")
        ax.set_xlabel("percentile")
        ax.set_ylabel("app GET latency, ms (log)")
        ax.set_title("App reads over the socket while the hydrator bootstraps")
        ax.legend(fontsize=8)
        save(fig, "reader_impact")

    if (fp := results.get("footprint")) is not None:
        runs = fp["runs"]
        labels = [f"{r['keys']:,} keys" for r in runs]
        fig, ax = plt.subplots(figsize=(7, 4))
        redis_rss = [r["redis"]["rss_mib"] for r in runs]
        hyd_rss = [r["hydrator"]["rss_mib"] for r in runs]
        ax.bar(labels, redis_rss, label="Redis RSS")
        ax.bar(labels, hyd_rss, bottom=redis_rss, label="hydrator RSS")
        ax.scatter(labels, [r["together_pss_mib"] for r in runs], marker="D", color="black",
                   zorder=3, label="PSS together")  # fmt: skip
        ax.axhline(45, color="red", linestyle="--", label="idle target 45 MiB")
        ax.set_ylabel("MiB")
        ax.set_title("Sidecars' memory")
        ax.legend(fontsize=8)
        save(fig, "footprint")

    if (adm := results.get("admission")) is not None:
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
        save(fig, "admission")

    if (hy := results.get("hydration")) is not None and hy.get("runs"):
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
        save(fig, "hydration")

    if (fr := results.get("freshness")) is not None and fr.get("runs"):
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
        save(fig, "freshness")
    return made


# -- the document -------------------------------------------------------------------------------


def shortfalls(results: dict[str, dict[str, Any]]) -> list[str]:
    """Why each figure that misses its target misses it, from the profiles in the results."""
    notes: list[str] = []
    lat = results.get("latency")
    if lat is not None:
        uds, c = lat["python"]["uds"], lat["redis_benchmark"]["uds"]
        ratios = lat["ratios"]["get_p50_over_redis_benchmark_uds_p50"]
        prof = lat.get("profile_redis_py_get_uds", {})
        if ratios["get"] > 1.5:
            notes.append(
                f"**Look-up p50 (x{ratios['get']} of redis-benchmark).** The socket is not the "
                f"cost: a bare Python socket GET takes {uds['raw_socket_prepacked']['p50_us']} µs "
                f"(x{ratios.get('raw_socket_prepacked')}), hiredis on a socket "
                f"{uds['hiredis_on_socket']['p50_us']} µs, redis-py's "
                f"`Connection.send_command/read_response` "
                f"{uds['redis_py_connection_send_read']['p50_us']} µs, `Redis.get` "
                f"{uds['get']['p50_us']} µs vs C {c['get']['p50_us']} µs. cProfile: "
                f"{prof.get('python_functions_per_get')} Python function calls per `get` "
                "(connection-pool checkout/release, retry wrapper, redis-py 8's per-command "
                "observability hooks). Fix on the app side: one dedicated connection and "
                "`send_command`/`read_response` measured "
                f"x{ratios.get('redis_py_connection_send_read')} here, "
                "`single_connection_client=True` "
                f"x{ratios.get('redis_py_single_connection')}; batch with MGET; a compiled "
                "client (Go/Java/C) is at the baseline."
            )
        remote = lat["ratios"].get("remote-0.25ms_over_uds", {}).get("request_10_gets")
        if remote is not None and remote["p50"] < 10:
            c_ratio = lat["ratios"]["redis_benchmark_remote-0.25ms_over_uds"]["get"]["p50"]
            mget = lat["ratios"]["remote-0.25ms_10_gets_over_uds_mget"]
            notes.append(
                f"**10 look-ups local vs remote (x{remote['p50']}).** Each local GET costs the "
                f"same Python client time as a remote one, so the request ratio is (client + "
                f"0.25 ms) / client: with {uds['get']['p50_us']} µs per redis-py GET the 10x is "
                f"out of reach. With a C client the same comparison is x{c_ratio}, and one "
                f"local MGET vs 10 remote GETs is x{mget}: the pattern delivers the 10x once the "
                "client's per-call cost is small (see the previous point) or the look-ups are "
                "batched."
            )
    ri = results.get("reader_impact")
    if ri is not None:
        rows = [f for f in ri["figures"] if f["met"] is False]
        if rows:
            idle = ri["idle"]
            runs = ri["runs"]
            exec_max = {
                r["bootstrap_batch_max_keys"]: r["redis_latency_histograms"]
                .get("exec", {})
                .get("max_bucket_usec")
                for r in runs
            }
            exec_text = ", ".join(f"{us:,} µs at batch {b}" for b, us in exec_max.items())
            notes.append(
                f"**App read p99 while hydrating ({rows[0]['value']} ms).** Two causes. (1) The "
                f"machine: idle p99 is {idle['p99_ms']} ms (p50 {idle['p50_ms']} ms) on 2 shared "
                "cores running the broker, Redis, the hydrator and the app; Redis's own GET "
                "histogram stays in microseconds, so much of the tail is the app (and Redis, "
                "mid-batch) waiting for a CPU. (2) The writes: bootstrap batches go into the "
                "spare database as 500-key MSETs in a plain pipeline (no MULTI/EXEC: nothing "
                "reads that database until SWAPDB), so readers interleave between commands; "
                f"Redis's longest EXEC was {exec_text} (histogram buckets). What remains is CPU "
                "scheduling on 2 shared cores: give Redis a CPU request so it is not preempted."
            )
    ic = results.get("interceptor")
    if ic is not None and any(f["met"] is False for f in ic["figures"]):
        sc = ic["scenarios"]
        notes.append(
            f"**Interceptor (p50 {sc['interceptor-1']['p50_ms']} ms through Envoy + ext_authz "
            f"vs {sc['envoy']['p50_ms']} ms through Envoy alone).** The authorizer itself "
            f"answers a check in {sc['authorizer-1']['p50_ms']} ms p50 (Redis round trip "
            "included) when called directly; the rest is the two extra hops per request "
            "(Envoy -> authorizer -> Redis and back), each a process wake-up on 2 shared, "
            "overloaded cores, plus Envoy's ext_authz client. A compiled authorizer behind "
            "the same contract saves at most the Python part of the first figure; removing a "
            "hop is what reaches the target: an Envoy dynamic module (Rust, in-process) "
            "reading Redis over the socket with the same rules, leaving ext_authz for Istio's "
            "CUSTOM action."
        )
    fp = results.get("footprint")
    if fp is not None and fp.get("targets", {}).get("met") is False:
        idle = next(r for r in fp["runs"] if r["keys"] == 0)
        steps = ", ".join(
            f"{s['step']} +{s['added_mib']}"
            for s in fp.get("hydrator_import_profile", [])
            if s["added_mib"] is not None
        )
        notes.append(
            f"**Idle memory ({idle['together_rss_mib']} MiB RSS).** Redis is "
            f"{idle['redis']['rss_mib']} MiB RSS ({idle['redis']['rss_file_mib']} MiB of it "
            f"file-backed, PSS {idle['redis']['pss_mib']}); the hydrator is "
            f"{idle['hydrator']['rss_mib']} MiB, i.e. what its imports cost before any data "
            f"(MiB): {steps}. Fix: parse the config with `json` + dataclasses in the sidecar "
            "(pydantic and the models cost ~11 MiB), render metrics without prometheus_client "
            "(~2 MiB), import aiokafka's codecs lazily; PSS together is "
            f"{idle['together_pss_mib']} MiB (what the node actually pays)."
        )
    adm = results.get("admission")
    if adm is not None and adm.get("targets", {}).get("met") is False:
        top = max(r["concurrency"] for r in adm["runs"])
        on = next(r for r in adm["runs"] if r["concurrency"] == top and r["webhook"])
        off = next(r for r in adm["runs"] if r["concurrency"] == top and not r["webhook"])
        prof = adm.get("operator_profile_at_max_concurrency") or {}
        inclusive = {p["function"]: p["share"] for p in prof.get("top_inclusive", [])}
        handling = max((v for k, v in inclusive.items() if "_handle_request" in k), default=None)
        client = max((v for k, v in inclusive.items() if "kubernetes/client" in k), default=None)
        own = "; ".join(f"{p['function']} {p['share']:.0%}" for p in prof.get("top_own", [])[:6])
        notes.append(
            f"**Admission at {top} concurrent (webhook call p99 "
            f"~{on['apiserver_webhook_call']['p99_ms_interpolated']} ms).** The handler's own "
            f"time is p50 ~{on['operator_handler']['p50_ms_interpolated']} / p99 "
            f"~{on['operator_handler']['p99_ms_interpolated']} ms (operator histogram), but the "
            "operator spends "
            f"{on['cpu_ms_per_pod'].get('operator')} ms of CPU per Pod and the apiserver "
            f"{on['cpu_ms_per_pod'].get('kube-apiserver')} ms (vs "
            f"{off['cpu_ms_per_pod'].get('kube-apiserver')} without the webhook): {top} "
            "simultaneous calls queue on one Python event loop on 2 shared cores. py-spy: "
            f"aiohttp/kopf request handling {handling:.0%} of samples, the kubernetes client "
            f"(Events, coalesced per binding and reason each second; status reads) "
            f"{client:.0%}; own time: {own}. Next: keep the webhook in its own "
            "process/replicas (the chart's webhook role; 2+ replicas), keep-alive/HTTP/2 so the "
            "apiserver stops opening new TLS connections per concurrent call, a lighter "
            "admission path than kopf's (pydantic Body copies, deep copies), and a faster JSON "
            "encoder for the patch."
            if handling is not None and client is not None
            else f"**Admission at {top} concurrent.** See the operator profile in "
            "benchmarks/results/admission.json."
        )
    for name in ("hydration", "freshness"):
        data = results.get(name)
        if data is None:
            continue
        short = [f for f in figures_of(name, data) if f["met"] is False]
        if short:
            listed = "; ".join(f"{f['figure']}: {fmt(f['value'])} {f['unit']}" for f in short)
            where = {
                "hydration": "raw MSET rate and a bare aiokafka consumer's rate",
                "freshness": "a bare aiokafka consumer's receive latency (the Kafka floor)",
            }[name]
            notes.append(
                f"**{name}** ({listed}): measured by `benchmarks/{name}.py` against {where}, "
                f"in the same run; see its JSON and its owner's notes for the profile."
            )
    return notes


def write_docs(
    results: dict[str, dict[str, Any]],
    rows: list[tuple[str, dict[str, Any]]],
    images: dict[str, str],
    summary: dict[str, Any],
) -> Path:
    m = summary["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"_Generated by `python -m benchmarks.run_all{' --quick' if summary['quick'] else ''}` "
        f"on {summary['finished']} ({'quick' if summary['quick'] else 'full'} run, "
        f"{summary['wall_seconds']:.0f} s). Do not edit: run `make bench`._",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), shared with other work while measuring; "
        f"Python {m['python']}, {m['redis_server'].split(' sha')[0]}, Kafka {m['kafka']}, "
        f"redis-py {m['redis']}, hiredis {m['hiredis']}, aiokafka {m['aiokafka']}.",
        "",
        "Every figure is measured next to its baseline in the same run; the ratio is "
        "figure / baseline unless the row says otherwise. Raw numbers, parameters and profiles: "
        "`benchmarks/results/<name>.json`; console output: `benchmarks/results/<name>.log`.",
        "",
        "| benchmark | figure | value | baseline (same run) | ratio | target | |",
        "|---|---|---|---|---|---|---|",
    ]
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


def method_sections(results: dict[str, dict[str, Any]], images: dict[str, str]) -> list[str]:
    out: list[str] = []
    lat = results.get("latency")
    if lat is not None:
        delay = lat["parameters"]["delay"]
        net = lat.get("network", {})
        achieved = {k: v.get("achieved_added_rtt_ms") for k, v in net.get("delays", {}).items()}
        out += [
            "### Latency (`benchmarks/latency.py`)",
            "",
            "10 sequential GETs per request, and one MGET of the same 10 keys, against the "
            "sidecar Redis over its Unix socket (`uds`), the same config on TCP loopback (`tcp`), "
            "and a Redis in a network namespace behind a veth pair on a private /30 (`veth`), "
            "with 0.25 ms and 1 ms of added round trip. "
            f"Delay: {delay} ({lat['parameters']['netem_probe']}); measured added RTT "
            f"{achieved} ms. Clients: redis-py + hiredis (the app), thinner Python paths "
            "(for the profile) and redis-benchmark (C, one client). Rounds interleave targets.",
            "",
            "| target | GET p50/p99 µs | 10 GETs p50/p99 µs | MGET p50/p99 µs | "
            "redis-benchmark GET p50/p99 µs |",
            "|---|---|---|---|---|",
        ]
        for name, row in lat["python"].items():
            c = lat["redis_benchmark"][name]["get"]
            out.append(
                f"| {name} | {row['get']['p50_us']} / {row['get']['p99_us']} | "
                f"{row['request_10_gets']['p50_us']} / {row['request_10_gets']['p99_us']} | "
                f"{row['request_mget_10']['p50_us']} / {row['request_mget_10']['p99_us']} | "
                f"{c['p50_us']} / {c['p99_us']} |"
            )
        out.append("")
    if "latency" in images:
        out += [f"![latency]({images['latency']})", ""]
    ri = results.get("reader_impact")
    if ri is not None:
        out += [
            "### Reader impact (`benchmarks/reader_impact.py`)",
            "",
            f"{ri['parameters']['records']:,} records; the app reads "
            f"{ri['parameters']['app_reads_per_s']}/s over the socket while the real "
            "`sidecar-state-hydrator` rebuilds the view into the spare database; only GETs "
            "between its first write and SWAPDB count. "
            f"Idle: {ri['idle']['p50_ms']} / {ri['idle']['p99_ms']} ms (p50/p99).",
            "",
        ]
        for run in ri["runs"]:
            g = run["gets_during"]
            out.append(
                f"- batch {run['bootstrap_batch_max_keys']}: "
                f"{run['hydration_records_per_s']:,} rec/s over {run['window_seconds']} s; "
                f"app GET p50/p99/max {g['p50_ms']} / {g['p99_ms']} / {g['max_ms']} ms "
                f"(n={g['n']})"
            )
        out.append("")
    if "reader_impact" in images:
        out += [f"![reader impact]({images['reader_impact']})", ""]
    fp = results.get("footprint")
    if fp is not None:
        out += [
            "### Footprint (`benchmarks/footprint.py`)",
            "",
            "| keys | Redis RSS / PSS MiB | Redis used_memory MiB | hydrator RSS / PSS / peak "
            "MiB | together RSS / PSS MiB |",
            "|---|---|---|---|---|",
        ]
        for r in fp["runs"]:
            out.append(
                f"| {r['keys']:,} | {r['redis']['rss_mib']} / {r['redis']['pss_mib']} | "
                f"{r['redis_used_memory_mib']} | {r['hydrator']['rss_mib']} / "
                f"{r['hydrator']['pss_mib']} / {r['hydrator']['peak_rss_mib']} | "
                f"{r['together_rss_mib']} / {r['together_pss_mib']} |"
            )
        out.append("")
    if "footprint" in images:
        out += [f"![footprint]({images['footprint']})", ""]
    adm = results.get("admission")
    if adm is not None:
        out += [
            "### Admission (`benchmarks/admission.py`)",
            "",
            "Pod creates through a local kube-apiserver, with the operator's webhook "
            "registered (Pods injected) and without it; wall time of each create call from "
            "the kubernetes client's REST layer, bursts of N threads released together.",
            "",
            "| concurrent | webhook | create p50 / p99 ms | webhook call p50 / p99 ms "
            "(apiserver, interpolated) | handler p99 ms | CPU ms per Pod |",
            "|---|---|---|---|---|---|",
        ]
        for r in adm["runs"]:
            call = r.get("apiserver_webhook_call", {})
            handler = r.get("operator_handler", {})
            cpu = ", ".join(f"{k} {v}" for k, v in r.get("cpu_ms_per_pod", {}).items())
            out.append(
                f"| {r['concurrency']} | {'on' if r['webhook'] else 'off'} | "
                f"{r['create']['p50_ms']} / {r['create']['p99_ms']} | "
                f"{call.get('p50_ms_interpolated', '')} / {call.get('p99_ms_interpolated', '')} "
                f"| {handler.get('p99_ms_interpolated', '')} | {cpu} |"
            )
        out.append("")
    if "admission" in images:
        out += [f"![admission]({images['admission']})", ""]
    for name in ("hydration", "freshness"):
        if name in images:
            out += [f"### {name.capitalize()} (`benchmarks/{name}.py`)", "",
                    f"![{name}]({images[name]})", ""]  # fmt: skip
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
            from tests.support.kafka_broker import install_kafka

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
