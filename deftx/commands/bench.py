"""``deftx bench``: the benchmark suite (deftx's ops vs torch baselines) and the scaling study.

Examples::

    deftx bench                                   # all ops, XLM-R base shapes (scale 0.1 on CPU)
    deftx bench --ops topk,scatter --k 0.001,0.01 --model-shapes mbert --scale 1
    deftx bench --device cuda --model-shapes llama-7b --scale 0.25 --out results/
    deftx bench --model-shapes my_model.json      # custom shapes (formats: deftx bench --help)
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
import math
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from deftx.commands._common import add_overwrite_output_argument, output_refusal, path_text, positive_int, seed_int

if TYPE_CHECKING:
    from deftx.perf.shapes import ShapeSet, ShapeSpec
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
FORMATTER = argparse.HelpFormatter

DEFAULT_OPS = "topk,rsvd,scatter,step"
DEFAULT_SCALING_K = 0.01
DEFAULT_CHUNK_PARAMS = 1e9
DEFAULT_BASELINE_MAX_PARAMS = 6e8
DEVICE_CHOICES = "{cpu,cuda,cuda:N,auto}"
SUITE_ONLY = {"backends": "--backends", "scale": "--scale", "predict_target": "--predict-target",
              "no_check": "--no-check"}
"""Options of the suite that the scaling study has no use for (dest -> option)."""
SCALING_ONLY = {
    "scaling_sets": "--scaling-sets", "scaling_k": "--scaling-k", "chunk_params": "--chunk-params",
    "baseline_max_params": "--baseline-max-params",
}
"""Options of the scaling study that the suite has no use for (dest -> option)."""


class BenchInputError(ValueError):
    """Bad input found after parsing, before any measurement: one line, exit status 2."""


GUARDED = (BenchInputError,)
"""Only :class:`BenchInputError` is :func:`deftx.commands._common.guarded`'s one line: bench runs deftx's
ops, and a ValueError, OSError or KeyError raised while measuring is a defect of the measured code
whose traceback must show, not bad input. Bad input is checked before any work instead: argparse's
types for values, :class:`BenchInputError` for what needs the parsed command."""


def _csv(kind: Callable[[str], object]) -> Callable[[str], tuple]:
    """argparse type: a non-empty comma-separated list of ``kind`` (whose own message passes through)."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
        except argparse.ArgumentTypeError:
            raise
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r} ({err})") from err
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return values

    return parse


def _choice(known: Sequence[str], what: str) -> Callable[[str], str]:
    """argparse type: one of ``known`` (``what`` names them in the message)."""

    def parse(text: str) -> str:
        if text not in known:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; known: {', '.join(known)}")
        return text

    return parse


def _fraction(text: str) -> float:
    """argparse type: a fraction in (0, 1]."""
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def _parameter_count(minimum: float) -> Callable[[str], float]:
    """argparse type: a finite parameter count >= ``minimum`` (``1e9`` allowed)."""

    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum:g}, got {text!r}")
        return value

    return parse


def _device_name(text: str) -> str:
    """argparse type: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (whether CUDA is there is checked later)."""
    index = text.removeprefix("cuda:")
    if text in ("cpu", "cuda", "auto") or (text.startswith("cuda:") and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or auto, got {text!r}")


def _predict_target(text: str) -> str:
    """argparse type: a datasheet target :func:`deftx.perf.targets.get_target` knows."""
    from deftx.perf.targets import get_target

    try:
        get_target(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return text


def _op_names() -> tuple[str, ...]:
    """The benchmark cases (``deftx.perf.cases.OPS``'s names), from the op registry already loaded at
    start-up: building the parser imports no benchmark code."""
    from deftx.ops.registry import OPS

    return tuple(case for entry in OPS.values() for case in entry.bench_cases)


def _backend_names() -> tuple[str, ...]:
    from deftx.ops.registry import BACKENDS

    return BACKENDS


def _device(name: str) -> str:
    """The device to run on: ``auto`` resolved; CUDA asked for where torch sees none is refused."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchInputError(f"--device {name} but torch sees no CUDA device")
    return name


def timed_backends(ops: Sequence[str], device: str) -> dict[str, tuple[str, ...]]:
    """Per op, the deftx backends the suite times on ``device`` (never the Triton interpreter)."""
    import torch

    from deftx.perf.cases import dispatch_op
    from deftx.perf.cases.base import deftx_backends

    return {op: tuple(deftx_backends(dispatch_op(op), torch.device(device))) for op in ops}


def suite_ops(args: argparse.Namespace, device: str) -> tuple[str, ...]:
    """The ops the suite times: ``--ops``, or the default ops, checked against ``--backends`` with one
    lookup of what each op is timed under on ``device``.

    An op none of the given backends times would be left out of the table: refused when ``--ops``
    names it, left out with a note on stderr when the ops are the defaults.

    Raises:
        BenchInputError: a backend none of the ops is timed under, or an op of ``--ops`` none of
            the backends times.
    """
    ops = args.ops or tuple(DEFAULT_OPS.split(","))
    backends = args.backends
    if not backends:
        return ops
    timed = timed_backends(ops, device)
    here = sorted({b for names in timed.values() for b in names})
    for backend in backends:
        if not any(backend in names for names in timed.values()):
            why = " (the Triton interpreter on CPU is a correctness tool, never timed)" if backend == "triton" else ""
            raise BenchInputError(
                f"--backends {backend}: not timed on {device} for {','.join(ops)}{why}; timed here: {', '.join(here)}"
            )
    untimed = [op for op, names in timed.items() if not set(names) & set(backends)]
    if untimed and args.ops is not None:
        op = untimed[0]
        raise BenchInputError(
            f"--ops {op}: not timed under --backends {','.join(backends)} on {device} ({op} is timed here under "
            f"{', '.join(timed[op])}); add one of those to --backends or leave {op} out of --ops"
        )
    if untimed:
        print(f"deftx bench: note: {', '.join(untimed)} left out: not timed under --backends "
              f"{','.join(backends)} on {device}", file=sys.stderr)
    return tuple(op for op in ops if op not in untimed)


def _check_mode_options(args: argparse.Namespace) -> None:
    """Refuse options the chosen mode (suite or ``--scaling``) would ignore."""
    unused = SUITE_ONLY if args.scaling else SCALING_ONLY
    given = [option for dest, option in unused.items() if getattr(args, dest) is not None]
    if given:
        mode = "the suite, not to --scaling" if args.scaling else "--scaling only"
        raise BenchInputError(f"{', '.join(given)} applies to {mode}")


def _check_scaling_ops(ops: Sequence[str]) -> None:
    """The scaling study times each op against its primary baseline: only ops that have one."""
    from deftx.perf.scaling import PRIMARY_BASELINE

    unknown = [op for op in ops if op not in PRIMARY_BASELINE]
    if unknown:
        raise BenchInputError(f"--scaling times {', '.join(PRIMARY_BASELINE)}, not {', '.join(unknown)}")


OUTPUT_SUFFIXES = (".json", ".png", ".md")
"""The files :func:`_write_outputs` writes beside its stem."""


def output_stem(args: argparse.Namespace, device: str, read: Mapping[str, ShapeSet]) -> Path:
    """``<out>/<device>_<shapes>`` (``<device>_scaling`` with ``--scaling``): the outputs' path less the suffix."""
    name = "scaling" if args.scaling else read[args.model_shapes].name
    return Path(args.out) / f"{device.split(':')[0]}_{name}"


def _check_out(out: str, stem: Path, overwrite: bool) -> None:
    """Refuse an output folder that cannot be made or written, or that holds the outputs of an earlier run
    (``stem`` plus :data:`OUTPUT_SUFFIXES`) unless ``overwrite``, before any measurement."""
    from deftx.perf.report import output_folder_problem

    problem = output_folder_problem(out)
    if problem is not None:
        raise BenchInputError(f"--out {out}: {problem}")
    refusal = output_refusal("--out", [stem.with_name(stem.name + suffix) for suffix in OUTPUT_SUFFIXES], overwrite)
    if refusal is not None:
        raise BenchInputError(refusal)


def _note_profile_keys(spec: ShapeSpec, args: argparse.Namespace) -> None:
    """Say on stderr that a shape file's ``dtype`` / ``settings`` (``deftx profile``'s) are not read here."""
    if spec.run_keys:
        print(f"deftx bench: note: {spec.source}: {' and '.join(spec.run_keys)} are deftx profile's, not read "
              f"here (bench runs "
              f"--dtype {args.dtype} --rank {args.rank} --oversample {args.oversample} --n-iter {args.n_iter} "
              "and --k)", file=sys.stderr)


def _read_shapes(spec: str) -> ShapeSpec:
    """``read_shape_spec(spec)``, a bad name or file as :class:`BenchInputError`."""
    from deftx.perf.shapes import read_shape_spec

    try:
        return read_shape_spec(spec)
    except ValueError as err:
        raise BenchInputError(str(err)) from err


def _timing(args: argparse.Namespace, default: TimingSettings) -> TimingSettings:
    """``--repeats N``: exactly N timed calls (after the default warm-up); else ``default``."""
    from deftx.perf.timing import TimingSettings

    if args.repeats is None:
        return default
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


def run_suite_command(args: argparse.Namespace, device: str, command: str, read: Mapping[str, ShapeSet]) -> int:
    """The suite on ``--model-shapes`` (in ``read``, the sets :func:`check_inputs` read): table and outputs;
    exit status 1 when no measurement succeeded."""
    from deftx.perf.report import (
        TABLE_COLUMNS,
        failed_everything,
        format_table,
        plot_suite,
        summary_lines,
        table_rows,
        wrong_outputs,
    )
    from deftx.perf.suite import SuiteConfig, run_suite

    scale = args.scale if args.scale is not None else (DEFAULT_CPU_SCALE if device == "cpu" else 1.0)
    shapes = read[args.model_shapes].scaled(scale)
    config = SuiteConfig(
        shapes=shapes,
        ops=args.ops,
        device=device,
        dtype=args.dtype,
        k_fractions=args.k or (0.001, 0.01, 0.1),
        rank=args.rank,
        oversample=args.oversample,
        n_iter=args.n_iter,
        backends=args.backends,
        timing=_timing(args, SuiteConfig(shapes=shapes).timing),
        memory=not args.no_memory,
        check_outputs=not args.no_check,
        seed=args.seed,
    )
    doc = run_suite(config, progress=not args.no_progress, command=command)
    doc["shape_set"]["scale"] = scale
    rows = table_rows(doc)
    print("\n".join(summary_lines(doc)))
    print(format_table(TABLE_COLUMNS, rows))
    predicted = add_prediction(doc, args, device, shapes)
    stem = output_stem(args, device, read)
    notes = "\n".join(f"- {line}" for line in summary_lines(doc))
    _write_outputs(stem, doc, TABLE_COLUMNS, rows, plot_suite, "\n\n".join(filter(None, (notes, predicted))))
    print(f"wrote {stem}.json, {stem}.png, {stem}.md")
    failure = failed_everything(doc) or wrong_outputs(doc)
    if failure is not None:
        print(f"deftx bench: error: {failure} (each row's error: {stem}.json)", file=sys.stderr)
        return 1
    return 0


def run_scaling_command(args: argparse.Namespace, device: str, command: str, read: Mapping[str, ShapeSet]) -> int:
    """The scaling study (on the sets :func:`check_inputs` read, by name, and built-ins): table and outputs."""
    from deftx.perf.report import SCALING_COLUMNS, format_table, plot_scaling, scaling_table
    from deftx.perf.scaling import K_SWEEP, SCALING_SETS, ScalingConfig, run_scaling

    sets = args.scaling_sets or SCALING_SETS
    values = scaling_values(args)
    defaults = ScalingConfig()
    config = ScalingConfig(
        sets=tuple(sets),
        ops=args.ops,
        device=device,
        dtype=args.dtype,
        k_fraction=values["scaling_k"],
        k_sweep=args.k or K_SWEEP,
        k_sweep_set=args.model_shapes,
        chunk_numel=int(values["chunk_params"]),
        baseline_max_numel=None if values["baseline_max_params"] == 0 else int(values["baseline_max_params"]),
        rank=args.rank,
        oversample=args.oversample,
        n_iter=args.n_iter,
        memory=not args.no_memory,
        seed=args.seed,
        timing=_timing(args, defaults.timing),
    )
    doc = run_scaling(config, progress=not args.no_progress, command=command, read=read)
    rows = scaling_table(doc)
    print(doc["streaming"])
    print(format_table(SCALING_COLUMNS, rows))
    stem = output_stem(args, device, read)
    _write_outputs(stem, doc, SCALING_COLUMNS, rows, plot_scaling)
    print(f"wrote {stem}.json, {stem}.png, {stem}.md")
    return 0


def scaling_values(args: argparse.Namespace) -> dict[str, float]:
    """``--scaling-k``, ``--chunk-params`` and ``--baseline-max-params``, their defaults where not given."""
    defaults = {"scaling_k": DEFAULT_SCALING_K, "chunk_params": DEFAULT_CHUNK_PARAMS,
                "baseline_max_params": DEFAULT_BASELINE_MAX_PARAMS}
    return {dest: default if getattr(args, dest) is None else getattr(args, dest) for dest, default in defaults.items()}


def _exact(x: float) -> str:
    """``x`` as a command-line number that reads back as ``x``: short (``0.01``, ``1e+09``) where ``:g``
    keeps every digit, else every digit (``0.0012345678``)."""
    short = f"{x:g}"
    return short if float(short) == x else repr(float(x))


def canonical_command(args: argparse.Namespace, device: str) -> str:
    """The command line that reproduces this run, every option spelled out."""
    words = ["deftx", "bench", "--ops", ",".join(args.ops), "--model-shapes", args.model_shapes, "--device", device]
    if args.k:
        words += ["--k", ",".join(_exact(k) for k in args.k)]
    if args.scale is not None:
        words += ["--scale", _exact(args.scale)]
    words += ["--dtype", args.dtype, "--rank", str(args.rank), "--oversample", str(args.oversample)]
    words += ["--n-iter", str(args.n_iter), "--seed", str(args.seed), "--out", args.out]
    if args.backends:
        words += ["--backends", ",".join(args.backends)]
    if args.repeats is not None:
        words += ["--repeats", str(args.repeats)]
    if args.no_memory:
        words.append("--no-memory")
    if args.no_check:
        words.append("--no-check")
    if args.predict_target is not None:
        words += ["--predict-target", args.predict_target]
    if args.scaling:
        values = scaling_values(args)
        words.append("--scaling")
        if args.scaling_sets:
            words += ["--scaling-sets", ",".join(args.scaling_sets)]
        words += ["--scaling-k", _exact(values["scaling_k"]), "--chunk-params", _exact(values["chunk_params"])]
        words += ["--baseline-max-params", _exact(values["baseline_max_params"])]
    return " ".join(shlex.quote(w) for w in words)


def check_inputs(args: argparse.Namespace) -> tuple[str, dict[str, ShapeSet]]:
    """Everything about the command checked before any measurement; returns the device to run on and
    the shape sets of ``--model-shapes`` and ``--scaling-sets`` by the name given (every file read
    once, here). Sets ``args.ops`` to the ops to time (:func:`suite_ops`).

    Raises:
        BenchInputError: an option the mode ignores, CUDA asked for where there is none, a backend
            not timed here (or an op of --ops no given backend times), an op the scaling study has no
            baseline for, a shape set that does not load, an output folder that cannot be written, or
            one that holds an earlier run's outputs of this device and shape set (unless ``--overwrite``).
    """
    _check_mode_options(args)
    device = _device(args.device)
    if args.scaling:
        args.ops = args.ops or tuple(DEFAULT_OPS.split(","))
        _check_scaling_ops(args.ops)
    else:
        args.ops = suite_ops(args, device)
    specs = {name: _read_shapes(name) for name in dict.fromkeys((args.model_shapes, *(args.scaling_sets or ())))}
    read = {name: spec.shapes for name, spec in specs.items()}
    _check_out(args.out, output_stem(args, device, read), args.overwrite)
    for spec in specs.values():
        _note_profile_keys(spec, args)
    return device, read


def run(args: argparse.Namespace) -> int:
    device, read = check_inputs(args)
    command = canonical_command(args, device)
    if args.scaling:
        return run_scaling_command(args, device, command, read)
    return run_suite_command(args, device, command, read)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ops",
        type=_csv(_choice(_op_names(), "op")),
        default=None,
        metavar="OPS",
        help=f"comma-separated subset of {','.join(_op_names())} (default {DEFAULT_OPS}, less those "
        "--backends does not time here; compose: 2 SFTs, originals saved; scores: DeFT-X |U S Vh|; --scaling: "
        "topk,rsvd,scatter,step only)",
    )
    parser.add_argument(
        "--model-shapes",
        default="xlmr-base",
        metavar="SET",
        help="built-in shape set (xlmr-base, mbert, llama-7b, e5-small, xlmr-large, tinyllama-1.1b, "
        "open-llama-3b; default xlmr-base) or a JSON file, either "
        '{"name": N, "tensors": [{"name": T, "shape": [dims], "vocab": true, "frozen": true}], "num_layers": L, '
        '"layer_tensors": [...]} (tensors once, layer_tensors L times; vocab rows and layers shrink with --scale) '
        'or deftx profile\'s {"name": N, "parameters": {T: [dims]}, "frozen": [T]} (its dtype and settings are '
        "profile's: here --dtype, --k, --rank, --oversample, --n-iter); with --scaling: the K-sweep set",
    )
    parser.add_argument(
        "--device", type=_device_name, default="auto", metavar=DEVICE_CHOICES,
        help="cpu, cuda (or cuda:N), or auto: cuda when available (default auto)",
    )
    parser.add_argument(
        "--k",
        type=_csv(_fraction),
        default=None,
        help="K values as fractions in (0, 1] of all parameters (default 0.001,0.01,0.1; the step also runs "
        "at 0.05; with --scaling: the K sweep, default 0.001,0.003,0.01,0.03,0.1)",
    )
    parser.add_argument(
        "--scale",
        type=_fraction,
        default=None,
        help="keep this fraction in (0, 1] of the layers and vocabulary rows "
        f"(default {DEFAULT_CPU_SCALE} on CPU, 1 on CUDA; suite only)",
    )
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="dtype of the weights (default fp32)")
    parser.add_argument("--backends", type=_csv(_choice(_backend_names(), "backend")), default=None,
                        metavar="BACKENDS",
                        help=f"comma-separated deftx backends to time, of {','.join(_backend_names())} (default: "
                        "every one that runs here: native and torch on CPU, triton and torch on CUDA; the Triton "
                        "interpreter on CPU is never timed; suite only)")
    parser.add_argument("--rank", type=positive_int, default=32, help="rsvd: rank kept, >= 1 (default 32)")
    parser.add_argument("--oversample", type=seed_int, default=8,
                        help="rsvd: extra sketch columns, >= 0 (default 8)")
    parser.add_argument("--n-iter", type=seed_int, default=2, help="rsvd: power iterations, >= 0 (default 2)")
    parser.add_argument(
        "--repeats", type=positive_int, default=None,
        help="timed calls per measurement, >= 1 (default: >= 3 and >= 0.5 s; scaling: 3; a call over 10 s: once)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument("--no-check", action="store_true", default=None,
                        help="time deftx's implementations without first checking one call of each against a "
                        "torch reference (by default a wrong output is an error row, not timed, and the exit "
                        "status is 1; suite only)")
    parser.add_argument(
        "--predict-target",
        type=_predict_target,
        default=None,
        help="datasheet target of the predicted-vs-measured table: sm_90 (H100 SXM), h200 (H200 SXM, 4.8 TB/s) "
        "or sm_80 (A100 80GB SXM) "
        "(default: taken from the CUDA device name; none on CPU; suite only)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--seed", type=seed_int, default=0, help="synthetic data seed, >= 0 (default 0)")
    parser.add_argument("--out", type=path_text, default="bench-results", metavar="DIR",
                        help="output folder, made if missing (default bench-results); the outputs of an earlier "
                        "run of the same device and shape set there are refused unless --overwrite")
    add_overwrite_output_argument(parser, "--out",
                                  "<device>_<shapes>.json/.png/.md (<device>_scaling.* with --scaling)")
    scaling = parser.add_argument_group("scaling study")
    scaling.add_argument("--scaling", action="store_true", help="run the scaling study instead of the suite")
    scaling.add_argument("--scaling-sets", type=_csv(str), default=None, metavar="SETS",
                         help="shape sets of the size sweep (default: all built-ins, 118M to 6.7B)")
    scaling.add_argument("--scaling-k", type=_fraction, default=None,
                         help=f"K of the size sweep, a fraction in (0, 1] (default {DEFAULT_SCALING_K:g})")
    scaling.add_argument("--chunk-params", type=_parameter_count(1), default=None, metavar="N",
                         help="stream sets larger than this many parameters in chunks of at most this size, "
                         ">= 1 (default 1e9)")
    scaling.add_argument("--baseline-max-params", type=_parameter_count(0), default=None, metavar="N",
                         help="run baselines only on sets up to this size, >= 0 (0: no limit; default 6e8)")
