"""``deftx profile``: the static kernel report (no GPU needed) or a runtime torch.profiler trace."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from deftx.commands._common import path_text, positive_int

STATIC_DEFAULT_OUT = "benchmarks/results"
DEFAULT_ARCH = "sm_90"
STATIC_ONLY = {"arch": "--arch", "workers": "--workers"}
"""Options only --static reads (dest -> option)."""
RUNTIME_ONLY = {"device": "--device", "backend": "--backend", "iterations": "--iterations"}
"""Options only the runtime mode (a TARGET) reads (dest -> option)."""
RUNTIME_DEFAULT_OUT = "profile"

NAME = "profile"
SUMMARY = "static kernel report (--static, no GPU) or a runtime torch.profiler trace"
FORMATTER = argparse.RawDescriptionHelpFormatter

DESCRIPTION = textwrap.dedent(
    """\
    Kernel-level profiling, two modes.

    Static (--static, no GPU needed): compile every declared Triton kernel specialisation
    for --arch (sm_80 = A100 80GB SXM, sm_90 = H100 SXM) and report per specialisation the
    registers per thread, spills, shared memory, theoretical occupancy (warps per SM) and
    SASS instruction counts (global loads/stores by width, atomics, shared-memory ops, MMA),
    the instructions one iteration of its vector-load loop issues on the unmasked path, plus
    any violated design promise; then a roofline prediction per op (topk, rsvd,
    reconstruct_abs, scatter, masked_step) for the --shapes model beside the dense torch
    baseline. Writes static_<arch>_<shapes>.json and .md (arch without its underscore:
    static_sm90_xlmr-base.json) into --out. Everything in it is PREDICTED, not measured.

    Runtime (TARGET): run TARGET under torch.profiler on --device and write a Chrome
    trace (trace_<target>.json) and a per-range / per-kernel summary (profile_<target>.json
    and .md: time, calls, modelled bytes, achieved GB/s and GFLOP/s). TARGET is an op
    (topk, rsvd, scatter, step), train-step (one step of each phase of a sparse
    fine-tuning of a tiny BERT: full step, selection, sparse step, compose), or a JSON
    config file whose keys are those of deftx.perf.trace.TraceConfig.
    """
)

EPILOG = textwrap.dedent(
    """\
    examples:
      deftx profile --static --arch sm_90 --shapes xlmr-base
      deftx profile --static --arch sm_80 --shapes my_model.json --out /tmp/report
      deftx profile topk --device cpu --shapes tiny
      deftx profile train-step --device cuda --out traces/
      deftx profile profile_config.json

    options of one mode only (--arch, --workers: --static; --device, --backend, --iterations:
    runtime) are refused in the other.

    shape-set JSON (--shapes FILE.json; deftx bench --model-shapes reads the same files, taking
    its own --dtype / --k / --rank for dtype and settings), either form:
      {"name": ..., "dtype": "fp32|bf16|fp16", "parameters": {name: [dims]},
       "frozen": [names], "settings": {"k_fraction": ..., "rank": ...}}
      {"name": ..., "dtype": ..., "settings": {...}, "tensors": [{"name": T, "shape": [dims],
       "frozen": true}], "num_layers": L, "layer_tensors": [...]}  (layer_tensors L times)
    dims: integers >= 0 (0: an empty tensor); dtype default fp32; settings default as the built-ins.
    """
)


def _static(args: argparse.Namespace) -> int:
    from deftx.perf.report import write_static_report
    from deftx.perf.static.analysis import build_static_report
    from deftx.perf.workload import load_workload

    shapes_name = args.shapes or "xlmr-base"
    arch = args.arch or DEFAULT_ARCH
    workload = load_workload(shapes_name)
    command = f"deftx profile --static --arch {arch} --shapes {shapes_name}"
    report = build_static_report(arch, workload, workers=args.workers, command=command)
    json_path, md_path = write_static_report(report, args.out or STATIC_DEFAULT_OUT)
    violating = [k for k in report["kernels"] if k["violations"]]
    print(
        f"{len(report['kernels'])} specialisations compiled for {arch}, "
        f"{len(report['compile_failures'])} compile failures, {len(violating)} with violations"
    )
    for k in violating:
        print(f"  {k['name']}: {'; '.join(k['violations'])}")
    for f in report["compile_failures"]:
        print(f"  {f['name']}: does not compile: {f['error'].splitlines()[0] if f['error'] else ''}")
    print(f"wrote {json_path} and {md_path} (PREDICTED, not measured)")
    return 1 if violating or report["compile_failures"] else 0


def _runtime(args: argparse.Namespace) -> int:
    from deftx.perf.trace import TARGETS, TraceConfig, load_trace_config, profile_target

    overrides = {"device": args.device, "backend": args.backend, "shapes": args.shapes, "iterations": args.iterations}
    if args.target in TARGETS:
        config = TraceConfig(target=args.target, **{k: v for k, v in overrides.items() if v is not None})
    elif Path(args.target).is_file():
        config = load_trace_config(args.target, **overrides)
    else:
        print(
            f"deftx profile: {args.target!r} is neither one of {', '.join(TARGETS)} nor a config file", file=sys.stderr
        )
        return 2
    summary = profile_target(config, args.out or RUNTIME_DEFAULT_OUT)
    for row in summary["rows"]:
        if row["kind"] in ("deftx op", "phase"):
            rate = f", {row['achieved_gb_per_s']:.2f} GB/s" if row["achieved_gb_per_s"] is not None else ""
            print(f"  {row['name']}: {row['mean_ms']:.3f} ms x {row['calls']}{rate}")
    print("wrote " + ", ".join(summary["files"]))
    return 0


def options_of_the_other_mode(args: argparse.Namespace) -> list[str]:
    """The options given that only the mode not chosen reads (``--static`` or a TARGET)."""
    others = RUNTIME_ONLY if args.static else STATIC_ONLY
    return [option for dest, option in others.items() if getattr(args, dest) is not None]


def run(args: argparse.Namespace) -> int:
    if args.static == (args.target is not None):
        print("deftx profile: error: give either --static or a TARGET (see --help)", file=sys.stderr)
        return 2
    unused = options_of_the_other_mode(args)
    if unused:
        mode, other = ("--static", "a runtime TARGET") if args.static else ("a runtime TARGET", "--static")
        print(f"deftx profile: error: {', '.join(unused)} only {'applies' if len(unused) == 1 else 'apply'} "
              f"to {other}, not to {mode}", file=sys.stderr)
        return 2
    if args.static:
        return _static(args)
    return _runtime(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        nargs="?",
        metavar="TARGET",
        help="runtime mode: topk | rsvd | scatter | step | train-step | CONFIG.json",
    )
    parser.add_argument("--static", action="store_true", help="compile the kernels and write the static report")
    parser.add_argument(
        "--arch",
        default=None,
        choices=("sm_80", "sm_90"),
        help=f"static mode only: target GPU architecture (default {DEFAULT_ARCH})",
    )
    parser.add_argument(
        "--shapes",
        default=None,
        metavar="SET",
        help="xlmr-base | mbert | llama-7b | tiny (their own dtypes), another built-in set of deftx bench "
        "(e5-small, xlmr-large, tinyllama-1.1b, open-llama-3b: fp32) | FILE.json, the shape-set JSON below "
        "(default: xlmr-base for --static, tiny at run time)",
    )
    parser.add_argument(
        "--out",
        type=path_text,
        default=None,
        metavar="DIR",
        help=f"output folder (default {STATIC_DEFAULT_OUT} for --static, ./{RUNTIME_DEFAULT_OUT} at run time)",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=None,
        help="static mode only: compile processes, >= 1 (default: the CPU count)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="runtime mode only: device to run on (default cpu)"
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "triton", "native", "torch"),
        default=None,
        help="runtime mode only: op backend (default $DEFTX_BACKEND or auto)",
    )
    parser.add_argument(
        "--iterations", type=positive_int, default=None,
        help="runtime mode only: profiled repetitions, >= 1 (default 1)",
    )
