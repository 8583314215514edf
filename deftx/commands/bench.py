"""``deftx bench``: the benchmark suite (deftx's ops vs torch baselines) and the scaling study.

Examples::

    deftx bench                                   # all ops, XLM-R base shapes (scale 0.1 on CPU)
    deftx bench --ops topk,scatter --k 0.001,0.01 --model-shapes mbert --scale 1
    deftx bench --device cuda --model-shapes llama-7b --scale 0.25 --out results/
    deftx bench --model-shapes my_model.json      # custom shapes (format: deftx.perf.shapes)
    deftx bench --scaling                         # time / memory vs model size and vs K
    deftx bench --predict-target sm_90 --scale 0.01 --repeats 1 --no-memory   # side-by-side on CPU

Writes ``<out>/<device>_<shapes>.json`` / ``.png`` / ``.md`` (``<device>_scaling.*`` with
``--scaling``) and prints the table.

Predicted vs measured (:mod:`deftx.perf.predicted`): on CUDA, and on any device with
``--predict-target sm_80|sm_90|h200``, a second table puts each implementation's measured time
next to the time ``deftx profile --static``'s roofline model predicts on the target
(``max(bytes / datasheet bandwidth, FLOPs / datasheet peak)``), their ratio, and deftx's
measured and predicted speedup over each baseline. The target comes from the GPU's name
(H200 -> h200, H100 -> sm_90, A100 -> sm_80) unless given; another GPU gets a note and no rows. It is
written under ``"predicted"`` in the JSON and as a section of the markdown; the first
table is unchanged.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deftx.perf.shapes import ShapeSet
    from deftx.perf.timing import TimingSettings

DEFAULT_CPU_SCALE = 0.1

NAME = "bench"
SUMMARY = "benchmark deftx's ops against torch baselines (table, JSON, PNG); --scaling for the scaling study"
DESCRIPTION = (
    "Time deftx's ops (topk, rsvd, scatter, step) under each backend against their torch baselines on "
    "synthetic weights with real models' parameter shapes; report speedup, achieved GB/s, % of the roof "
    "measured in the same run, and peak extra memory. Writes <out>/<device>_<shapes>.json/.png/.md. "
    "On CUDA (or with --predict-target) a second table puts each measured time next to the roofline "
    "time deftx profile --static predicts on a datasheet GPU target (JSON key 'predicted', a section "
    "of the .md)."
)
EPILOG = (
    "predicted vs measured: predicted = max(bytes / datasheet HBM bandwidth, FLOPs / datasheet peak) "
    "from deftx.perf.roofline, a lower bound; measured/predicted says how far from it a run is. "
    "The target is taken from the CUDA device name (H200 -> h200, H100 -> sm_90, A100 -> sm_80; other GPUs: a note, "
    "no rows) or given with --predict-target, which also works on CPU for inspection (then labelled "
    "'predicted for <target>, measured on cpu')."
)
FORMATTER = argparse.ArgumentDefaultsHelpFormatter
GUARDED = False


def _csv(kind: Callable[[str], object]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r} ({err})") from err

    return parse


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("deftx bench: --device cuda but torch sees no CUDA device")
    if name != "cpu" and not name.startswith("cuda"):
        raise SystemExit(f"deftx bench: --device must be cpu or cuda, got {name!r}")
    return name


def _check_ops(ops: tuple[str, ...]) -> tuple[str, ...]:
    from deftx.perf.cases import OPS

    unknown = [op for op in ops if op not in OPS]
    if unknown or not ops:
        raise SystemExit(f"deftx bench: unknown op(s) {', '.join(unknown) or '(none)'}; known: {', '.join(OPS)}")
    return ops


def _check_k(ks: tuple[float, ...]) -> tuple[float, ...]:
    bad = [k for k in ks if not 0.0 < k <= 1.0]
    if bad or not ks:
        raise SystemExit(f"deftx bench: --k values must be fractions in (0, 1], got {list(ks)}")
    return ks


def _timing(args: argparse.Namespace, default: TimingSettings) -> TimingSettings:
    """``--repeats N``: exactly N timed calls (after the default warm-up); else ``default``."""
    from deftx.perf.timing import TimingSettings

    if args.repeats is None:
        return default
    if args.repeats < 1:
        raise SystemExit(f"deftx bench: --repeats must be >= 1, got {args.repeats}")
    return TimingSettings(warmup=default.warmup, min_repeats=args.repeats, max_repeats=args.repeats, min_time_s=0.0)


def _write_outputs(
    stem: Path,
    doc: dict,
    header: Sequence[str],
    rows: list[list[str]],
    plot: Callable[[dict, Path], None],
    extra_markdown: str = "",
) -> None:
    """``<stem>.json``, ``<stem>.md`` (the table, then ``extra_markdown``) and ``<stem>.png``."""
    from deftx.perf.report import markdown_table, write_json

    write_json(doc, stem.parent / f"{stem.name}.json")
    sections = [markdown_table(header, rows), *([extra_markdown] if extra_markdown else [])]
    (stem.parent / f"{stem.name}.md").write_text("\n\n".join(sections) + "\n")
    plot(doc, stem.parent / f"{stem.name}.png")


def _check_predict_target(args: argparse.Namespace) -> None:
    """Fail before any measurement on an unknown ``--predict-target`` or one given with ``--scaling``."""
    from deftx.perf.targets import get_target

    if args.predict_target is None:
        return
    if args.scaling:
        raise SystemExit("deftx bench: --predict-target applies to the suite, not to --scaling")
    try:
        get_target(args.predict_target)
    except ValueError as err:
        raise SystemExit(f"deftx bench: --predict-target: {err}") from err


def add_prediction(doc: dict, args: argparse.Namespace, device: str, shapes: ShapeSet) -> str:
    """On CUDA or with ``--predict-target``: add ``doc["predicted"]``, print the side-by-side
    table, and return its markdown section ("" otherwise)."""
    from deftx.perf.predicted import choose_target, predict_suite
    from deftx.perf.report import PREDICTED_COLUMNS, format_table, predicted_lines, predicted_markdown, predicted_table

    if args.predict_target is None and not device.startswith("cuda"):
        return ""
    target, choice = choose_target(doc, args.predict_target)
    doc["predicted"] = predict_suite(doc, target, shapes, choice)
    print()
    print("\n".join(predicted_lines(doc)))
    rows = predicted_table(doc)
    if rows:
        print(format_table(PREDICTED_COLUMNS, rows))
    return predicted_markdown(doc)


def run_suite_command(args: argparse.Namespace, device: str, command: str) -> int:
    from deftx.perf.report import TABLE_COLUMNS, format_table, plot_suite, summary_lines, table_rows
    from deftx.perf.shapes import load_shape_set
    from deftx.perf.suite import SuiteConfig, run_suite

    scale = args.scale if args.scale is not None else (DEFAULT_CPU_SCALE if device == "cpu" else 1.0)
    try:
        shapes = load_shape_set(args.model_shapes).scaled(scale)
    except ValueError as err:
        raise SystemExit(f"deftx bench: {err}") from err
    config = SuiteConfig(
        shapes=shapes,
        ops=_check_ops(args.ops),
        device=device,
        dtype=args.dtype,
        k_fractions=_check_k(args.k or (0.001, 0.01, 0.1)),
        rank=args.rank,
        oversample=args.oversample,
        n_iter=args.n_iter,
        backends=args.backends,
        timing=_timing(args, SuiteConfig(shapes=shapes).timing),
        memory=not args.no_memory,
        seed=args.seed,
    )
    doc = run_suite(config, progress=not args.no_progress, command=command)
    doc["shape_set"]["scale"] = scale
    rows = table_rows(doc)
    print("\n".join(summary_lines(doc)))
    print(format_table(TABLE_COLUMNS, rows))
    predicted = add_prediction(doc, args, device, shapes)
    stem = Path(args.out) / f"{device.split(':')[0]}_{shapes.name}"
    _write_outputs(stem, doc, TABLE_COLUMNS, rows, plot_suite, predicted)
    print(f"wrote {stem}.json, {stem}.png, {stem}.md")
    return 0


def run_scaling_command(args: argparse.Namespace, device: str, command: str) -> int:
    from deftx.perf.report import SCALING_COLUMNS, format_table, plot_scaling, scaling_table
    from deftx.perf.scaling import K_SWEEP, SCALING_SETS, ScalingConfig, run_scaling
    from deftx.perf.shapes import load_shape_set

    sets = args.scaling_sets or SCALING_SETS
    try:
        for name in (*sets, args.model_shapes):
            load_shape_set(name)
    except ValueError as err:
        raise SystemExit(f"deftx bench: {err}") from err
    defaults = ScalingConfig()
    config = ScalingConfig(
        sets=tuple(sets),
        ops=_check_ops(args.ops),
        device=device,
        dtype=args.dtype,
        k_fraction=args.scaling_k,
        k_sweep=_check_k(args.k or K_SWEEP),
        k_sweep_set=args.model_shapes,
        chunk_numel=int(args.chunk_params),
        baseline_max_numel=None if args.baseline_max_params <= 0 else int(args.baseline_max_params),
        rank=args.rank,
        oversample=args.oversample,
        n_iter=args.n_iter,
        memory=not args.no_memory,
        seed=args.seed,
        timing=_timing(args, defaults.timing),
    )
    doc = run_scaling(config, progress=not args.no_progress, command=command)
    rows = scaling_table(doc)
    print(doc["streaming"])
    print(format_table(SCALING_COLUMNS, rows))
    stem = Path(args.out) / f"{device.split(':')[0]}_scaling"
    _write_outputs(stem, doc, SCALING_COLUMNS, rows, plot_scaling)
    print(f"wrote {stem}.json, {stem}.png, {stem}.md")
    return 0


def canonical_command(args: argparse.Namespace, device: str) -> str:
    """The command line that reproduces this run, every option spelled out."""
    words = ["deftx", "bench", "--ops", ",".join(args.ops), "--model-shapes", args.model_shapes, "--device", device]
    if args.k:
        words += ["--k", ",".join(f"{k:g}" for k in args.k)]
    if args.scale is not None:
        words += ["--scale", f"{args.scale:g}"]
    words += ["--dtype", args.dtype, "--rank", str(args.rank), "--oversample", str(args.oversample)]
    words += ["--n-iter", str(args.n_iter), "--seed", str(args.seed), "--out", args.out]
    if args.backends:
        words += ["--backends", ",".join(args.backends)]
    if args.repeats is not None:
        words += ["--repeats", str(args.repeats)]
    if args.no_memory:
        words.append("--no-memory")
    if args.predict_target is not None:
        words += ["--predict-target", args.predict_target]
    if args.scaling:
        words.append("--scaling")
        if args.scaling_sets:
            words += ["--scaling-sets", ",".join(args.scaling_sets)]
        words += ["--scaling-k", f"{args.scaling_k:g}", "--chunk-params", f"{args.chunk_params:g}"]
        words += ["--baseline-max-params", f"{args.baseline_max_params:g}"]
    return " ".join(shlex.quote(w) for w in words)


def run(args: argparse.Namespace) -> int:
    device = _device(args.device)
    _check_predict_target(args)
    command = canonical_command(args, device)
    if args.scaling:
        return run_scaling_command(args, device, command)
    return run_suite_command(args, device, command)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ops",
        type=_csv(str),
        default=("topk", "rsvd", "scatter", "step"),
        help="comma-separated subset of topk,rsvd,scatter,step,compose,scores "
        "(compose: 2 SFTs, originals saved; scores: DeFT-X |U S Vh|)",
    )
    parser.add_argument(
        "--model-shapes",
        default="xlmr-base",
        help="built-in shape set (xlmr-base, mbert, llama-7b, e5-small, xlmr-large, tinyllama-1.1b, "
        "open-llama-3b) or a JSON file (format in deftx.perf.shapes); with --scaling: "
        "the K-sweep set",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda (or cuda:N), or auto (cuda when available)")
    parser.add_argument(
        "--k",
        type=_csv(float),
        default=None,
        help="K values as fractions of all parameters (default 0.001,0.01,0.1; the step also runs "
        "at 0.05; with --scaling: the K sweep, default 0.001,0.003,0.01,0.03,0.1)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help=f"keep this fraction of the layers and vocabulary rows (default {DEFAULT_CPU_SCALE} on CPU, 1 on CUDA)",
    )
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="dtype of the weights")
    parser.add_argument("--backends", type=_csv(str), default=None,
                        help="deftx backends to time (default: every one that runs here: native/triton and torch)")
    parser.add_argument("--rank", type=int, default=32, help="rsvd: rank kept")
    parser.add_argument("--oversample", type=int, default=8, help="rsvd: extra sketch columns")
    parser.add_argument("--n-iter", type=int, default=2, help="rsvd: power iterations")
    parser.add_argument(
        "--repeats", type=int, default=None,
        help="timed calls per measurement (default: >= 3 and >= 0.5 s; scaling: 3; a call over 10 s: once)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument(
        "--predict-target",
        default=None,
        help="datasheet target of the predicted-vs-measured table: sm_90 (H100 SXM), h200 (H200 SXM, 4.8 TB/s) "
        "or sm_80 (A100 80GB SXM) "
        "(unset: taken from the CUDA device name; none on CPU)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    parser.add_argument("--out", default="bench-results", help="output directory")
    scaling = parser.add_argument_group("scaling study")
    scaling.add_argument("--scaling", action="store_true", help="run the scaling study instead of the suite")
    scaling.add_argument("--scaling-sets", type=_csv(str), default=None,
                         help="shape sets of the size sweep (default: all built-ins, 118M to 6.7B)")
    scaling.add_argument("--scaling-k", type=float, default=0.01, help="K of the size sweep")
    scaling.add_argument("--chunk-params", type=float, default=1e9,
                         help="stream sets larger than this many parameters in chunks of at most this size")
    scaling.add_argument("--baseline-max-params", type=float, default=6e8,
                         help="run baselines only on sets up to this size (0: no limit)")
