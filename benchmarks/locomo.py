"""LoCoMo evidence retrieval: does retrieve-memories find the turns that answer a question?

    python -m benchmarks.locomo [--embedder minilm|hash] [--limit-conversations N]

Every dialogue turn of ../shared/data/locomo10.json (Maharana et al., ACL 2024; 10 conversations,
5,882 turns, 1,986 questions) is captured through MemoryService.capture, in batches, as one
memory; metadata {speaker, diaId, session, sessionDate, conversation}; timestamp = the session's
date; each conversation its own workspace. The stored text (`--text-format`, default
"speaker,caption,date,prev") is "(<session date>) <speaker>: <text> [shares <image caption>]
(replying to <previous speaker>: <previous text>)": the previous turn of the same session rides
along as context, while the memory (its id, its diaId) stays this one turn. `--text-format
speaker,caption,date` stores the turn alone. Every question is then asked through
MemoryService.search (limit 10), scoped to its conversation's workspace with the filter
{"workspaceId": ...}, in three modes: vector-only, lexical-only (BM25) and hybrid.

Metrics, per question, from the ranks of its evidence turns (dia_id) in the top 10:
- recall@k (the headline): the fraction of the question's evidence turns found in the top k,
  averaged over questions. A question with 3 evidence turns and 2 in the top 5 scores 2/3.
- hit@k: 1 when any evidence turn is in the top k ("any evidence in top k").
- MRR: 1/rank of the first evidence turn in the top 10, 0 when none is (MRR@10).
Aggregates are micro-averages over questions: "overall" is categories 1-4 together; category 5
(adversarial: questions whose premise is false) is reported apart.

Latency is MemoryService.search wall time in this process (no Ray, no HTTP, shards called one
after another): plan + filter + scoring + merge. Query embeddings are computed up front in
batches and seeded into the MicroBatcher's query cache, so the latency excludes the model; the
cost of embedding one query cold is measured separately and reported next to it.

Evidence ids in the file are cleaned: "D8:6; D9:17" splits, "D:11:26" reads as D11:26, "D30:05"
as D30:5; ids that name no turn of the conversation are dropped, and questions left without
evidence are excluded (the JSON counts both).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    Progress,
    build_service,
    fmt_table,
    latency_summary,
    log,
    make_embedder,
    mean,
    refresh_planner,
    save_json,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "locomo10.json"
DATA_FALLBACK = Path("/work/shared/data/locomo10.json")
K = 10
KS = (1, 5, 10)
MODES = ("vector", "lexical", "hybrid")
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop",
              5: "adversarial"}
CAPTURE_BATCH = 256
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
RECENCY = (0.1, 0.3)
_EVIDENCE_RE = re.compile(r"D:?(\d+):(\d+)")


@dataclass
class Turn:
    dia_id: str
    speaker: str
    text: str
    caption: str | None
    session: int
    date: str
    timestamp: str  # ISO 8601


@dataclass
class Question:
    conversation: str
    question: str
    category: int
    evidence: list[str]
    dropped: list[str] = field(default_factory=list)


@dataclass
class Conversation:
    sample_id: str
    speakers: tuple[str, str]
    turns: list[Turn]
    questions: list[Question]
    last_timestamp: float = 0.0


# -- data -------------------------------------------------------------------------------------

def parse_session_date(text: str) -> datetime:
    """'1:56 pm on 8 May, 2023' -> an aware datetime (UTC: the data carries no zone)."""
    return datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC)


def normalize_evidence(raw: list[str]) -> list[str]:
    out: list[str] = []
    for item in raw:
        for s, t in _EVIDENCE_RE.findall(str(item)):
            dia = f"D{int(s)}:{int(t)}"
            if dia not in out:
                out.append(dia)
    return out


def load(path: Path, limit: int | None = None) -> list[Conversation]:
    data = json.loads(path.read_text())
    convs: list[Conversation] = []
    for sample in data[: limit or None]:
        conv = sample["conversation"]
        turns: list[Turn] = []
        last = 0.0
        n = 1
        while f"session_{n}" in conv or f"session_{n}_date_time" in conv:
            items = conv.get(f"session_{n}") or []
            date = conv.get(f"session_{n}_date_time")
            if items and date:
                dt = parse_session_date(date)
                last = max(last, dt.timestamp())
                for t in items:
                    turns.append(Turn(dia_id=t["dia_id"], speaker=t["speaker"], text=t["text"],
                                      caption=t.get("blip_caption"), session=n, date=date.strip(),
                                      timestamp=dt.isoformat()))
            n += 1
        ids = {t.dia_id for t in turns}
        if len(ids) != len(turns):
            raise SystemExit(f"{sample['sample_id']}: duplicate dia_id")
        questions = []
        for qa in sample["qa"]:
            ev = normalize_evidence(qa.get("evidence") or [])
            kept = [e for e in ev if e in ids]
            questions.append(Question(conversation=sample["sample_id"], question=qa["question"],
                                      category=int(qa["category"]), evidence=kept,
                                      dropped=[str(e) for e in (qa.get("evidence") or [])
                                               if e not in ids]))
        convs.append(Conversation(sample["sample_id"], (conv["speaker_a"], conv["speaker_b"]),
                                  turns, questions, last))
    return convs


def turn_text(turn: Turn, fmt: str, prev: Turn | None = None) -> str:
    """What a turn is stored as. fmt: comma-separated options out of
    speaker  "<speaker>: " in front (questions name people; turns say "I"),
    caption  " [shares <blip caption>]" for a turn that shares a photo,
    date     "(<session date>) " in front,
    prev     " (replying to <speaker>: <text>)" with the previous turn of the same session,
             as context: the memory is still this one turn (its id, its diaId), but a short
             reply ("Wow, that's great!") becomes findable by what it replies to."""
    opts = {o.strip() for o in fmt.split(",") if o.strip()}
    unknown = opts - {"speaker", "caption", "date", "prev"}
    if unknown:
        raise SystemExit(f"--text-format: unknown option(s) {sorted(unknown)}")
    text = turn.text.strip()
    if "caption" in opts and turn.caption:
        text = f"{text} [shares {turn.caption.strip()}]"
    if "speaker" in opts:
        text = f"{turn.speaker}: {text}"
    if "date" in opts:
        text = f"({turn.date}) {text}"
    if "prev" in opts and prev is not None:
        text = f"{text} (replying to {prev.speaker}: {prev.text.strip()})"
    return text


def workspace(conv: Conversation) -> str:
    return f"locomo-{conv.sample_id}"


# -- evaluation -------------------------------------------------------------------------------

def score_question(evidence: list[str], retrieved: list[str]) -> dict[str, float]:
    ranks = [retrieved.index(e) + 1 for e in evidence if e in retrieved]
    out: dict[str, float] = {}
    for k in KS:
        found = sum(1 for r in ranks if r <= k)
        out[f"recall@{k}"] = found / len(evidence)
        out[f"hit@{k}"] = 1.0 if found else 0.0
    out["mrr"] = 1.0 / min(ranks) if ranks else 0.0
    return out


def aggregate(rows: list[tuple[int, dict[str, float]]]) -> dict[str, Any]:
    """Per category and overall (categories 1-4, micro-averaged); category 5 apart."""
    by_cat: dict[int, list[dict[str, float]]] = defaultdict(list)
    for cat, s in rows:
        by_cat[cat].append(s)

    def summarize(items: list[dict[str, float]]) -> dict[str, float]:
        if not items:
            return {"n": 0}
        return {"n": len(items), **{m: round(mean([s[m] for s in items]), 4) for m in items[0]}}

    main = [s for cat, s in rows if cat != 5]
    out: dict[str, Any] = {"overall_1_4": summarize(main)}
    for cat in sorted(by_cat):
        out[f"category_{cat}"] = {"name": CATEGORIES.get(cat, str(cat)),
                                  **summarize(by_cat[cat])}
    out["macro_1_4"] = {m: round(mean([out[f"category_{c}"][m] for c in (1, 2, 3, 4)
                                        if f"category_{c}" in out]), 4)
                        for m in ("recall@1", "recall@5", "recall@10", "mrr")}
    return out


class FrozenClock:
    """Stands in for serve.service's `time` module so `now` is a chosen instant (the end of
    the conversation) while perf_counter keeps working: recency weighting measured as if the
    questions were asked right after the last session."""

    def __init__(self, now: float):
        self.now = now
        self.perf_counter = time.perf_counter
        self.monotonic = time.monotonic

    def time(self) -> float:
        return self.now


async def run_queries(service: Any, caller: Any, convs: list[Conversation], mode: str, *,
                      label: str, recency_weight: float = 0.0, clock: bool = False,
                      strategy: str | None = None) -> dict[str, Any]:
    import memoray.serve.service as service_module

    rows: list[tuple[int, dict[str, float]]] = []
    lat: list[float] = []
    strategies: dict[str, int] = defaultdict(int)
    total = sum(len([q for q in c.questions if q.evidence]) for c in convs)
    prog = Progress(label, total, "q")
    real_time = service_module.time
    try:
        for conv in convs:
            if clock:
                service_module.time = FrozenClock(conv.last_timestamp + 86400.0)
            filters = {"workspaceId": workspace(conv)}
            for q in conv.questions:
                if not q.evidence:
                    continue
                t0 = time.perf_counter()
                records, info = await service.search(caller, q.question, K, filters, mode=mode,
                                                     recency_weight=recency_weight,
                                                     strategy=strategy)
                lat.append(time.perf_counter() - t0)
                strategies[info["strategy"]] += 1
                got = [(r.get("metadata") or {}).get("diaId") for r in records]
                rows.append((q.category, score_question(q.evidence, got)))
                prog.update()
    finally:
        service_module.time = real_time
    prog.close()
    return {"metrics": aggregate(rows), "latency": latency_summary(lat),
            "strategies": dict(strategies)}


def _bm25_defaults() -> list[float]:
    from memoray.lexical import LexicalIndex

    return list(LexicalIndex.__init__.__defaults__ or ())


# -- the run ----------------------------------------------------------------------------------

async def capture_all(service: Any, caller: Any, convs: list[Conversation], fmt: str) -> dict:
    from memoray.models import CaptureItem

    items = []
    for conv in convs:
        for i, t in enumerate(conv.turns):
            prev = conv.turns[i - 1] if i and conv.turns[i - 1].session == t.session else None
            items.append(CaptureItem(
                content=turn_text(t, fmt, prev), event_type="conversation", tier="project",
                workspace_id=workspace(conv), session_id=f"{conv.sample_id}-s{t.session}",
                agent_id=None, timestamp=t.timestamp,
                metadata={"speaker": t.speaker, "diaId": t.dia_id, "session": t.session,
                          "sessionDate": t.date, "conversation": conv.sample_id}))
    prog = Progress("capture (embed + store)", len(items), "turns")
    t0 = time.perf_counter()
    for i in range(0, len(items), CAPTURE_BATCH):
        batch = items[i: i + CAPTURE_BATCH]
        await service.capture(batch, caller)
        prog.update(len(batch))
    prog.close()
    secs = time.perf_counter() - t0
    return {"turns": len(items), "seconds": round(secs, 2),
            "turns_per_s": round(len(items) / secs, 1)}


async def seed_query_cache(batcher: Any, convs: list[Conversation]) -> dict:
    """Embed every question in batches (what a busy server's micro-batcher would do) and put
    them in the query cache, so per-query latency measures retrieval, not the model."""
    questions = list(dict.fromkeys(q.question for c in convs for q in c.questions if q.evidence))
    # the benchmark's own batcher: its cache may hold every question
    batcher.cache.capacity = max(batcher.cache.capacity, len(questions))
    prog = Progress("embed questions", len(questions), "q")
    for i in range(0, len(questions), 256):
        chunk = questions[i: i + 256]
        vecs = await batcher.embed(chunk)
        for q, v in zip(chunk, vecs):
            batcher.cache.put(q, v)
        prog.update(len(chunk))
    prog.close()
    # One query embedded cold, one at a time: what a lone retrieve pays on a cache miss.
    sample = questions[: min(50, len(questions))]
    cold = []
    for q in sample:
        t0 = time.perf_counter()
        batcher.embedder.embed([q])
        cold.append(time.perf_counter() - t0)
    return {"questions": len(questions), "cold_query_embedding": latency_summary(cold)}


def summary_rows(results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for mode, res in results.items():
        m = res["metrics"]
        for key in ["overall_1_4", "category_1", "category_2", "category_3", "category_4",
                    "category_5"]:
            if key not in m:
                continue
            s = m[key]
            name = "cat 1-4" if key == "overall_1_4" else f"cat {key[-1]} {s.get('name', '')}"
            rows.append([mode, name, s["n"], s["recall@1"], s["recall@5"], s["recall@10"],
                         s["hit@1"], s["hit@5"], s["hit@10"], s["mrr"]])
    return rows


def plot(results: dict[str, Any], sweep: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    colors = {"vector": "#4C72B0", "lexical": "#DD8452", "hybrid": "#55A868"}
    # 1: recall@k, categories 1-4
    ax = axes[0]
    width = 0.25
    x = np.arange(len(KS))
    for i, mode in enumerate(results):
        m = results[mode]["metrics"]["overall_1_4"]
        vals = [m[f"recall@{k}"] for k in KS]
        bars = ax.bar(x + (i - 1) * width, vals, width, label=mode, color=colors.get(mode))
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(0.60, color="gray", ls="--", lw=1)
    ax.text(-0.45, 0.61, "goal: hybrid R@5 0.60", fontsize=7, ha="left", color="gray")
    ax.set_xticks(x, [f"R@{k}" for k in KS])
    ax.set_ylim(0, 1)
    ax.set_title("evidence recall, categories 1-4")
    ax.legend(fontsize=8)
    # 2: recall@5 per category
    ax = axes[1]
    cats = [c for c in (1, 2, 3, 4, 5) if f"category_{c}" in next(iter(results.values()))[
        "metrics"]]
    x = np.arange(len(cats))
    for i, mode in enumerate(results):
        m = results[mode]["metrics"]
        vals = [m[f"category_{c}"]["recall@5"] for c in cats]
        ax.bar(x + (i - 1) * width, vals, width, label=mode, color=colors.get(mode))
    counts = {c: results["hybrid"]["metrics"][f"category_{c}"]["n"] for c in cats}
    ax.set_xticks(x, [f"{c} {CATEGORIES[c]}\n(n={counts[c]})" for c in cats], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("recall@5 per category (5 = adversarial, apart)")
    # 3: alpha sweep + latency
    ax = axes[2]
    if sweep.get("alpha"):
        alphas = sorted(float(a) for a in sweep["alpha"])
        for metric, style in (("recall@5", "-o"), ("recall@10", "-s"), ("mrr", "-^")):
            ax.plot(alphas, [sweep["alpha"][f"{a}"][metric] for a in alphas], style,
                    label=f"hybrid {metric}")
        ax.set_xlabel("alpha (weight of the vector score)")
        ax.set_ylim(0, 1)
        ax.set_title("hybrid fusion weight, categories 1-4")
        ax.legend(fontsize=8)
    else:  # no sweep: the latency per mode
        x = np.arange(len(results))
        for j, (q, hatch) in enumerate((("p50_ms", ""), ("p95_ms", "//"))):
            bars = ax.bar(x + (j - 0.5) * 0.35, [r["latency"][q] for r in results.values()],
                          0.35, hatch=hatch, label=q.replace("_ms", ""),
                          color=[colors.get(m) for m in results])
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(x, list(results))
        ax.set_ylabel("ms")
        ax.set_title("retrieve latency (in-process, query embedding cached)")
        ax.legend(fontsize=8)
    lat = ", ".join(f"{m} p50 {r['latency']['p50_ms']:.1f} / p95 {r['latency']['p95_ms']:.1f} ms"
                    for m, r in results.items())
    fig.suptitle(f"{title}\nretrieve latency (in-process service, query embedding cached): {lat}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from memoray.auth import LOCAL_PRINCIPAL
    from memoray.serve.service import Caller

    path = Path(args.data) if args.data else (DATA if DATA.exists() else DATA_FALLBACK)
    convs = load(path, args.limit_conversations)
    n_q = sum(len(c.questions) for c in convs)
    asked = sum(1 for c in convs for q in c.questions if q.evidence)
    dropped_ids = sum(len(q.dropped) for c in convs for q in c.questions)
    log(f"LoCoMo: {len(convs)} conversations, {sum(len(c.turns) for c in convs)} turns, "
        f"{n_q} questions ({n_q - asked} without usable evidence, excluded; "
        f"{dropped_ids} malformed/unknown evidence ids)")
    t_start = time.perf_counter()
    log(f"loading embedder {args.embedder} ...")
    embedder = make_embedder(args.embedder)
    caller = Caller(principal=LOCAL_PRINCIPAL)
    out: dict[str, Any] = {
        "benchmark": "locomo", "embedder": args.embedder, "text_format": args.text_format,
        "shards": args.shards, "limit": K, "data": str(path), "alpha": args.alpha,
        "bm25_k1_b": _bm25_defaults(), "bm25_patched": bool(args.bm25),
        "conversations": len(convs), "turns": sum(len(c.turns) for c in convs),
        "questions": n_q, "questions_asked": asked,
        "questions_excluded_no_evidence": n_q - asked,
        "evidence_ids_dropped_or_repaired": dropped_ids,
        "definitions": {
            "recall@k": "fraction of a question's evidence turns in the top k, averaged over "
                        "questions (headline)",
            "hit@k": "1 if any evidence turn is in the top k, averaged over questions",
            "mrr": "1/rank of the first evidence turn within the top 10 (0 if none), averaged",
            "overall_1_4": "micro-average over questions of categories 1-4",
            "macro_1_4": "unweighted mean of the category 1-4 averages",
            "latency": "MemoryService.search wall time, in-process (no Ray/HTTP), 2 shards "
                       "called sequentially, query embedding served from the seeded cache",
        },
    }
    with tempfile.TemporaryDirectory(prefix="memoray-locomo-") as tmp:
        service, cores, batcher, planner = build_service(Path(tmp), embedder, args.shards,
                                                         hybrid_alpha=args.alpha)
        out["capture"] = await capture_all(service, caller, convs, args.text_format)
        refresh_planner(planner, cores)
        out["query_embedding"] = await seed_query_cache(batcher, convs)
        results: dict[str, Any] = {}
        for mode in MODES:
            results[mode] = await run_queries(service, caller, convs, mode, label=f"ask ({mode})")
        out["results"] = results
        sweep: dict[str, Any] = {"alpha": {}, "recency": {}}
        if not args.no_sweep:
            for a in ALPHAS:
                if a == args.alpha:
                    sweep["alpha"][f"{a}"] = results["hybrid"]["metrics"]["overall_1_4"]
                    continue
                service.settings.hybrid_alpha = a
                r = await run_queries(service, caller, convs, "hybrid",
                                      label=f"sweep alpha={a}")
                sweep["alpha"][f"{a}"] = r["metrics"]["overall_1_4"]
            service.settings.hybrid_alpha = args.alpha
            for w in RECENCY:
                r = await run_queries(service, caller, convs, "hybrid", recency_weight=w,
                                      clock=True, label=f"sweep recency={w}")
                sweep["recency"][f"{w}"] = r["metrics"]["overall_1_4"]
            r = await run_queries(service, caller, convs, "hybrid", strategy="ann",
                                  label="hybrid, strategy=ann")
            sweep["strategy_ann"] = {"overall_1_4": r["metrics"]["overall_1_4"],
                                     "latency": r["latency"], "strategies": r["strategies"]}
        out["sweep"] = sweep
        out["planner"] = planner.accuracy()
        for core in cores:
            core.storage.close()
    out["total_seconds"] = round(time.perf_counter() - t_start, 1)
    return out


def _title(out: dict[str, Any]) -> str:
    bm25 = "k1={},b={}".format(*out["bm25_k1_b"]) + (" (what-if)" if out["bm25_patched"] else "")
    return (f"LoCoMo evidence retrieval ({out['questions_asked']} questions, embedder "
            f"{out['embedder']}, alpha {out['alpha']}, BM25 {bm25}, text {out['text_format']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embedder", choices=("minilm", "hash"), default="minilm")
    ap.add_argument("--limit-conversations", type=int, default=None)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=0.5,
                    help="hybrid weight of the vector score for the main run (server default 0.5)")
    ap.add_argument("--text-format", default="speaker,caption,date,prev",
                    help="what each turn is stored as: comma list of speaker, caption, date")
    ap.add_argument("--no-sweep", action="store_true", help="skip the alpha/recency sweeps")
    ap.add_argument("--bm25", default=None, metavar="K1,B",
                    help="what-if: run with other BM25 parameters (patches LexicalIndex's "
                         "defaults in this process only; the core default is unchanged)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="locomo", help="result file stem under benchmarks/results")
    ap.add_argument("--plot-only", action="store_true",
                    help="redraw benchmarks/results/<out>.png from <out>.json, run nothing")
    args = ap.parse_args(argv)
    if args.plot_only:
        from benchmarks.common import RESULTS_DIR

        saved = json.loads((RESULTS_DIR / f"{args.out}.json").read_text())
        png = RESULTS_DIR / f"{args.out}.png"
        plot(saved["results"], saved.get("sweep", {}), png, _title(saved))
        print(f"redrew {png}")
        return 0

    if args.bm25:
        from memoray.lexical import LexicalIndex

        k1, b = (float(x) for x in args.bm25.split(","))
        LexicalIndex.__init__.__defaults__ = (k1, b)
    out = asyncio.run(main_async(args))
    headers = ["mode", "subset", "n", "R@1", "R@5", "R@10", "hit@1", "hit@5", "hit@10", "MRR"]
    table = fmt_table(headers, summary_rows(out["results"]))
    lat_rows = [[m, r["latency"]["p50_ms"], r["latency"]["p95_ms"], r["latency"]["mean_ms"],
                 ", ".join(f"{k}:{v}" for k, v in r["strategies"].items())]
                for m, r in out["results"].items()]
    bm25 = "k1={},b={}".format(*out["bm25_k1_b"]) + (" (patched)" if args.bm25 else "")
    print(f"\nLoCoMo evidence retrieval, embedder={out['embedder']}, "
          f"text={out['text_format']}, alpha={args.alpha}, BM25 {bm25}, top {K}, "
          f"{out['questions_asked']} questions ({out['conversations']} conversations, "
          f"{out['turns']} turns)\n")
    print(table)
    print("\nretrieve latency (ms), in-process MemoryService.search, query embedding cached:")
    print(fmt_table(["mode", "p50", "p95", "mean", "strategy"], lat_rows))
    qe = out["query_embedding"]["cold_query_embedding"]
    print(f"one query embedded cold ({out['embedder']}): p50 {qe['p50_ms']:.1f} ms, "
          f"p95 {qe['p95_ms']:.1f} ms (add to the above on a query-cache miss)")
    print(f"capture: {out['capture']['turns']} turns in {out['capture']['seconds']} s "
          f"({out['capture']['turns_per_s']} turns/s, embedding included)")
    sweep = out["sweep"]
    if sweep.get("alpha"):
        print("\nhybrid alpha sweep (categories 1-4):")
        print(fmt_table(["alpha", "R@1", "R@5", "R@10", "hit@5", "MRR"],
                        [[a, s["recall@1"], s["recall@5"], s["recall@10"], s["hit@5"], s["mrr"]]
                         for a, s in sorted(sweep["alpha"].items(), key=lambda x: float(x[0]))]))
        print("\nhybrid recency weighting (now = 1 day after the last session, half-life 30 d):")
        base = out["results"]["hybrid"]["metrics"]["overall_1_4"]
        print(fmt_table(["recency_weight", "R@1", "R@5", "R@10", "MRR"],
                        [[0.0, base["recall@1"], base["recall@5"], base["recall@10"],
                          base["mrr"]]]
                        + [[float(w), s["recall@1"], s["recall@5"], s["recall@10"], s["mrr"]]
                           for w, s in sweep["recency"].items()]))
        sa = sweep["strategy_ann"]
        print(f"\nhybrid forced strategy=ann: R@5 {sa['overall_1_4']['recall@5']:.3f} "
              f"(planner's choice {base['recall@5']:.3f}), p50 {sa['latency']['p50_ms']:.1f} ms, "
              f"strategies used {sa['strategies']}")
    json_path = save_json(f"{args.out}.json", out)
    png = json_path.with_suffix(".png")
    plot(out["results"], sweep, png, _title(out))
    print(f"\nsaved {json_path} and {png} ({out['total_seconds']} s total)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
