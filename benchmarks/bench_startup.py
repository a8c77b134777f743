"""A server's start, stop and idle cost: `memoray serve` (hash embedder, 2 shards, one machine)
started and stopped `--runs` times with Ray's defaults and with memoray's (serve/launcher.py
`LOCAL_RAY_ENV`), in turn. Per start: memoray's "started in" and its steps, the Ray processes,
their RSS, and the CPU each uses while the server sits idle for `--idle-s` seconds.

Why: every agent session meets a server that is either starting or idle, and the test suite
starts about forty of them.

`--compare runtime`: MiniLM servers instead, with `embedding_runtime` torch and onnx in turn
(memoray/onnx_minilm.py), to show what torch costs the replica and the embedding worker in RSS
and start-up; each process's RSS is kept."""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import fmt_table, log, result_path, save_json

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
STEP = re.compile(r"^memoray: (.+?) \[([0-9.]+)s\]$", re.M)


def ray_defaults() -> dict[str, str]:
    """Ray's own values of the settings memoray changes (so a run can compare them)."""
    return {"RAY_prestart_worker_first_driver": "1", "RAY_task_events_report_interval_ms": "1000"}


def _proc(pid: int) -> tuple[str, int, int] | None:
    """(title, CPU ticks, RSS bytes) of a live process."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return title, int(fields[11]) + int(fields[12]), int(fields[21]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def _name(cmdline: str) -> str:
    """A process's short name: the actor class for a Ray worker, the script for Python."""
    args = [a for a in cmdline.split("\0") if a]
    if not args:
        return "?"
    if args[0].startswith("ray::"):
        return args[0][5:].split(".")[0].split(":")[0].split()[0]
    if "-m" in args[:-1]:
        return " ".join(args[args.index("-m") + 1:args.index("-m") + 3])
    script = next((a for a in args[1:] if a.endswith(".py")), None)
    return "/".join(Path(script).parts[-2:]) if script else Path(args[0]).name


def idle_cost(pids: list[int], seconds: float) -> dict[str, Any]:
    """CPU per process (percent of one core) over `seconds`, and RSS at the end."""
    before = {p: _proc(p) for p in pids}
    time.sleep(seconds)
    per: dict[str, float] = {}
    rss: dict[str, int] = {}
    for p, b in before.items():
        a = _proc(p)
        if a is None or b is None:
            continue
        name = _name(a[0])
        per[name] = per.get(name, 0.0) + (a[1] - b[1]) / TICK / seconds * 100
        rss[name] = rss.get(name, 0) + a[2]
    return {"cpu_pct_of_one_core": round(sum(per.values()), 1),
            "per_process": {k: round(v, 1) for k, v in sorted(per.items(), key=lambda kv: -kv[1])},
            "rss_mb": round(sum(rss.values()) / 2**20, 1),
            "rss_mb_per_process": {k: round(v / 2**20, 1)
                                   for k, v in sorted(rss.items(), key=lambda kv: -kv[1])}}


def one_start(env: dict[str, str], idle_s: float, embedder: str = "hash",
              settle_s: float = 10.0) -> dict[str, Any]:
    from tests.server_process import ServerProcess, descendants

    with tempfile.TemporaryDirectory(prefix="memoray-startup-") as tmp:
        server = ServerProcess(Path(tmp) / "data", embedder=embedder, env=env)
        t0 = time.perf_counter()
        server.start()
        wall = time.perf_counter() - t0
        try:
            text = server.tail(20000)
            started = float(re.search(r"started in ([0-9.]+)s", text).group(1))
            steps = {m.group(1).split(" (")[0]: float(m.group(2)) for m in STEP.finditer(text)}
            if embedder == "minilm":  # the first request builds the replica's runtime, which
                # loads its query model in the background (actors/query_embedder.py)
                import httpx

                httpx.get(server.url + "/healthz", timeout=120)
            # the start's stragglers (first planner pulls, trimmer, the query model) settle
            time.sleep(settle_s)
            pids = [server.proc.pid, *descendants(server.proc.pid)]
            titles = [t[0].split("\0")[0] for t in map(_proc, pids) if t is not None]
            idle = idle_cost(pids, idle_s)
        finally:
            t1 = time.perf_counter()
            server.stop()
            stop_s = time.perf_counter() - t1
    return {"started_in_s": started, "wall_to_ready_s": round(wall, 2), "steps_s": steps,
            "processes": len(titles),
            "idle_ray_workers": sum(t.startswith("ray::IDLE") for t in titles),
            "stop_s": round(stop_s, 2), **idle}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = list(res["settings"])
    for i, key in enumerate(labels):
        runs = res["settings"][key]["runs"]
        ax[0].scatter([i] * len(runs), [r["started_in_s"] for r in runs])
        ax[1].scatter([i] * len(runs), [r["cpu_pct_of_one_core"] for r in runs])
    for a, title in ((ax[0], "started in (s)"), (ax[1], "idle CPU (% of one core)")):
        a.set_xticks(range(len(labels)), labels)
        a.set_title(title)
        a.set_ylim(bottom=0)
    last = res["settings"][labels[-1]]["runs"][-1]["per_process"]
    names = list(last)[:12]
    ax[2].barh(names[::-1], [last[n] for n in names][::-1])
    ax[2].set_title(f"idle CPU per process, {labels[-1]} (%)", fontsize=9)
    fig.suptitle(f"memoray serve start and idle, one {os.cpu_count()}-core machine "
                 f"(load {os.getloadavg()[0]:.1f} at save)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="starts per setting")
    ap.add_argument("--idle-s", type=float, default=30.0, help="seconds of idle measured")
    ap.add_argument("--compare", choices=("ray-env", "runtime"), default="ray-env",
                    help="Ray's settings against memoray's (hash embedder), or MiniLM on torch "
                         "against ONNX Runtime")
    ap.add_argument("--out", default=None, help="file stem (startup, startup_runtime)")
    args = ap.parse_args(argv)

    if args.compare == "runtime":
        settings = {"torch": {"MEMORAY_EMBEDDING_RUNTIME": "torch"},
                    "onnx": {"MEMORAY_EMBEDDING_RUNTIME": "onnx"}}
        embedder, settle_s, out_stem = "minilm", 30.0, args.out or "startup_runtime"
    else:
        settings = {"Ray's defaults": ray_defaults(), "memoray's": {}}
        embedder, settle_s, out_stem = "hash", 10.0, args.out or "startup"
    res: dict[str, Any] = {"runs": args.runs, "idle_s": args.idle_s,
                           "load_at_start": os.getloadavg(),
                           "settings": {k: {"env": v, "runs": []} for k, v in settings.items()}}
    for i in range(args.runs):  # in turn, so a drift of the machine touches both alike
        for label, env in settings.items():
            log(f"start {i + 1}/{args.runs}, {label}")
            run = one_start(env, args.idle_s, embedder, settle_s)
            res["settings"][label]["runs"].append(run)
            log(f"  started in {run['started_in_s']} s, {run['processes']} processes, idle "
                f"{run['cpu_pct_of_one_core']}% of a core, {run['rss_mb']} MB")
    rows = []
    for label, s in res["settings"].items():
        runs = s["runs"]
        med = sorted(r["started_in_s"] for r in runs)[len(runs) // 2]
        cpu = sorted(r["cpu_pct_of_one_core"] for r in runs)[len(runs) // 2]
        s["median"] = {"started_in_s": med, "cpu_pct_of_one_core": cpu}
        rows.append([label, med, " ".join(str(r["started_in_s"]) for r in runs),
                     runs[-1]["processes"], runs[-1]["idle_ray_workers"], cpu,
                     " ".join(str(r["cpu_pct_of_one_core"]) for r in runs),
                     runs[-1]["rss_mb"], runs[-1]["stop_s"]])
    print(fmt_table(["setting", "start s (median)", "each", "processes", "ray::IDLE",
                     "idle CPU % of a core (median)", "each", "RSS MB", "stop s"], rows))
    print("RSS MB per process, the last start of each setting:")
    names = list(next(iter(res["settings"].values()))["runs"][-1]["rss_mb_per_process"])[:8]
    print(fmt_table(["process", *res["settings"]],
                    [[n, *[s["runs"][-1]["rss_mb_per_process"].get(n, "")
                           for s in res["settings"].values()]] for n in names]))
    res["embedder"] = embedder
    res["load_at_end"] = os.getloadavg()
    out = save_json(f"{out_stem}.json", res)
    png = result_path(f"{out_stem}.png")
    plot(res, png)
    log(f"saved {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
