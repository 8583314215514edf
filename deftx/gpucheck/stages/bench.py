"""Stages ``bench-xlmr`` and ``bench-llama``: deftx's public ops against the dense baselines.

One shape set per stage, at full size on the GPU: XLM-R base in fp32 (278M parameters) and
Llama-2-7B in bf16 (6.7B: θ1 and θ0 fit), K = 0.1%, 1%, 10% (the masked AdamW step at 5%).
The ops, through the public API so every fast path is what is timed:

* ``topk``: ``topk_mask`` vs ``cat`` + ``torch.topk`` (and ``cat`` + ``kthvalue`` on XLM-R);
* ``compose``: 2 SFTs, originals saved, vs densify + add_; against its byte roofline;
* ``step``: masked AdamW at 5% vs ``torch.optim.AdamW(fused=True)`` (and the foreach one on XLM-R);
* ``scores``: DeFT-X scores (rSVD + ``|U S Vh|``) vs ``torch.svd_lowrank`` + ``|U S Vh|``, errors
  reported for both;
* ``rsvd`` (XLM-R only): the factors vs ``svd_lowrank`` and ``torch.linalg.svd`` (226 full SVDs
  of a 7B model would take minutes: filtered out there).

Implementations are interleaved call by call; every case has a time cap (``budget_s`` of
its timed rounds, one timed call for calls over a second) and the stage a deadline past
which cases are recorded as skipped. A baseline that fails (out of memory, an index limit)
is a row with its error. deftx rows carry the syncs and launches of one call. The document
is rewritten after every case (``<prefix>_<set>.json`` / ``.md``) with the predicted-vs-
measured section for the GPU it ran on (the H200's figures for a GPU without a target of its own
and for the CPU's toy run), then plotted at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deftx.gpucheck.context import StageContext

if TYPE_CHECKING:
    from deftx.perf.targets import Target

FALLBACK_TARGET = "h200"
"""The roofline target of a run whose device has none of its own (the CPU's toy run, an unlisted GPU):
the H200 the check was written for. An H200, H100 or A100 is predicted for as itself."""
K_FRACTIONS = (0.001, 0.01, 0.1)
STEP_K = (0.05,)
DEADLINE_MARGIN_S = 4.0
TINY_SETTINGS = {"rank": 8, "oversample": 4, "roofline_copy_bytes": 16 << 20, "roofline_matmul_n": 256}
"""Toy runs: a smaller sketch and roofs (the full run uses the suite's rank 32 + 8 and its roofs)."""


@dataclass(frozen=True)
class BenchSet:
    """One benchmarked shape set: its name (or a tiny stand-in's), dtype, ops and baseline filter."""

    shapes: str
    dtype: str
    ops: tuple[str, ...]
    baselines: dict[str, tuple[str, ...]]


BENCH_SETS: dict[str, BenchSet] = {
    "xlmr": BenchSet(
        shapes="xlmr-base",
        dtype="fp32",
        ops=("topk", "compose", "step", "scores", "rsvd"),
        baselines={},
    ),
    "llama": BenchSet(
        shapes="llama-7b",
        dtype="bf16",
        ops=("topk", "compose", "step", "scores"),
        baselines={"topk": ("cat_topk",), "step": ("deftx_prepared", "adamw_fused"), "rsvd": ("svd_lowrank",)},
    ),
}
"""``cat + kthvalue`` (one CUDA block per slice: seconds per pass over 6.7B entries), the foreach
AdamW and ``torch.linalg.svd`` are filtered out of the 7B set."""


def shape_set(name: str, sizes: str):
    """The full shape set, or its tiny stand-in (same architecture family, toy dimensions)."""
    from deftx.perf.shapes import bert_like, llama_like, load_shape_set

    if sizes == "full":
        return load_shape_set(BENCH_SETS[name].shapes)
    if name == "xlmr":
        return bert_like("tiny-bert", vocab=500, positions=64, token_types=1, hidden=64, ffn=128, layers=2)
    return llama_like("tiny-llama", vocab=256, hidden=64, ffn=96, layers=2)


def timing_settings(sizes: str):
    """Full size: warm-up, 3 to 10 timed calls and >= 0.2 s, one call over 1 s, 2 s of rounds per
    case. Tiny: one timed call."""
    from deftx.perf.timing import TimingSettings

    if sizes == "full":
        return TimingSettings(warmup=1, min_repeats=3, max_repeats=10, min_time_s=0.2, long_call_s=1.0, budget_s=2.0)
    return TimingSettings(warmup=1, min_repeats=1, max_repeats=1, min_time_s=0.0, budget_s=1.0)


def suite_config(ctx: StageContext, name: str):
    """The :class:`~deftx.perf.suite.SuiteConfig` of bench set ``name`` for this run."""
    from deftx.perf.suite import SuiteConfig

    bench = BENCH_SETS[name]
    seconds = max(0.0, ctx.seconds_left() - DEADLINE_MARGIN_S)
    return SuiteConfig(
        shapes=shape_set(name, ctx.sizes),
        ops=bench.ops,
        device=ctx.device,
        dtype=bench.dtype,
        k_fractions=K_FRACTIONS,
        op_k_fractions={"step": STEP_K},
        baselines=bench.baselines,
        backends=("triton",) if ctx.device == "cuda" else None,
        timing=timing_settings(ctx.sizes),
        memory=ctx.device == "cuda",
        count_overhead=True,
        deadline=time.monotonic() + seconds,
        **({} if ctx.full else TINY_SETTINGS),
    )


def output_stem(ctx: StageContext, shapes_name: str) -> Path:
    """``<stage dir>/<prefix>_<shape set>`` (``h200_llama-7b``)."""
    return ctx.stage_dir / f"{ctx.prefix}_{shapes_name}"


def prediction_target(doc: dict[str, Any]) -> tuple[Target, str]:
    """The roofline target and how it was chosen: the GPU the suite ran on, detected from its name by
    :func:`deftx.perf.predicted.choose_target`, else :data:`FALLBACK_TARGET`."""
    from deftx.perf.predicted import choose_target

    target, choice = choose_target(doc)
    return (target, choice) if target is not None else choose_target(doc, FALLBACK_TARGET)


def add_prediction(doc: dict[str, Any], shapes) -> None:
    from deftx.perf.predicted import predict_suite

    target, choice = prediction_target(doc)
    doc["predicted"] = predict_suite(doc, target, shapes, choice)


def markdown(doc: dict[str, Any]) -> str:
    """The run's header lines, the comparison table and the predicted-vs-measured section."""
    from deftx.perf.report import TABLE_COLUMNS, markdown_table, predicted_markdown, summary_lines, table_rows

    header = "\n".join(f"- {line}" for line in summary_lines(doc))
    sections = [f"# deftx bench: {doc['shape_set']['name']} on {doc['device']}", header,
                markdown_table(TABLE_COLUMNS, table_rows(doc))]
    if "predicted" in doc:
        sections.append(predicted_markdown(doc))
    return "\n\n".join(sections) + "\n"


def write_document(doc: dict[str, Any], stem: Path, shapes) -> None:
    """``stem.json`` and ``stem.md`` with the prediction added."""
    from deftx.gpucheck.outputs import write_json

    add_prediction(doc, shapes)
    write_json(stem.with_suffix(".json"), doc)
    stem.with_suffix(".md").write_text(markdown(doc))


def headline(doc: dict[str, Any]) -> str:
    """Cases measured, failed and skipped, and the deftx-vs-baseline speedups of the auto backend."""
    from deftx.perf.report import format_k

    rows = doc["results"]
    failed = sum("error" in r for r in rows)
    skipped = sum("skipped" in r for r in rows)
    speedups = [f"{c['op']} {format_k(c['k_fraction'])} {c['speedup']:.2f}x {c['baseline']}"
                for c in doc["comparisons"] if c.get("auto")]
    wrong = sum(bool(r.get("wrong_output")) for r in rows)
    text = (f"{len(rows) - failed - skipped} rows measured, {failed} failed"
            + (f" ({wrong} of them a wrong output)" if wrong else "") + f", {skipped} skipped")
    return text + (f"; {'; '.join(speedups[:8])}" if speedups else "")


def stage_status(doc: dict[str, Any]) -> str:
    """``failed`` when a deftx row failed or any row (the prepared paths too) gave a wrong output, else ``ok``."""
    bad = [r for r in doc["results"] if ("error" in r and r["role"] == "deftx") or r.get("wrong_output")]
    return "failed" if bad else "ok"


def run_set(ctx: StageContext, name: str) -> dict[str, Any]:
    from deftx.perf.report import plot_suite
    from deftx.perf.suite import run_suite

    config = suite_config(ctx, name)
    stem = output_stem(ctx, config.shapes.name)
    command = f"deftx gpu-check --only {ctx.stage} (sizes {ctx.sizes})"

    def on_case(doc: dict[str, Any]) -> None:
        write_document(doc, stem, config.shapes)
        ctx.write_result({"status": "ok", "headline": f"partial: {headline(doc)}", "document": str(stem) + ".json"})
        print(f"[{ctx.stage}] {headline(doc)}", flush=True)

    doc = run_suite(config, progress=False, command=command, on_case=on_case)
    write_document(doc, stem, config.shapes)
    plot_suite(doc, stem.with_suffix(".png"))
    print(markdown(doc))
    return {"status": stage_status(doc), "headline": headline(doc), "document": str(stem) + ".json",
            "files": [str(stem.with_suffix(s)) for s in (".json", ".md", ".png")]}


def run_xlmr(ctx: StageContext) -> dict[str, Any]:
    return run_set(ctx, "xlmr")


def run_llama(ctx: StageContext) -> dict[str, Any]:
    return run_set(ctx, "llama")
