"""Command line of the GPU check: ``python -m deftx.gpucheck`` / ``deftx gpu-check`` / ``make gpu-check``."""

from __future__ import annotations

import argparse
import datetime
import glob
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from deftx.commands._common import parse_arguments, path_text, positive_float, refuse_repeated_options, seed_int
from deftx.gpucheck.plan import STAGE_NAMES, STAGES, TOTAL_BUDGET_S, PlannedStage, plan_lines, plan_stages, with_budgets

DESCRIPTION = textwrap.dedent(
    """\
    One prepared command for a GPU machine: install deftx onto its torch without a network, print
    the versions and the GPU, run the CUDA tests, measure the ceilings and a histogram pass, run
    the benchmarks against the dense baselines at full size (XLM-R base fp32, Llama-2-7B bf16)
    with the predicted-vs-measured table for the GPU (H200, H100 or A100; an H200's otherwise),
    run the sparse fine-tuning loop on CUDA,
    and profile every kernel with ncu and compute-sanitizer.

    Each stage runs in its own process, killed at its time budget; all budgets together fit
    8 minutes. Results go to OUT as they come: summary.json / summary.md, <gpu>_xlmr-base.json,
    <gpu>_llama-7b.json, <gpu>_kernels.json and gpucheck-logs.tar.gz (every log, table, plot,
    trace and ncu report): at most 8 files, as a device call returns. <gpu> is h200 on an H200,
    h100 on an H100.
    """
)

EPILOG = textwrap.dedent(
    """\
    stages (default budget in seconds):
    {stages}

    examples:
      make gpu-check OUT=gpu-out                     # everything, on the GPU machine
      python -m deftx.gpucheck --out gpu-out --only bench-llama,ncu --budget-of bench-llama=200
      python -m deftx.gpucheck --out /tmp/gc --device cpu --shapes tiny --skip install,tests
      python -m deftx.gpucheck --dry-run             # print the plan, run nothing

    exit status: 0 when every stage that ran is ok, 1 otherwise, 2 on a usage error; 128 + N when
    stopped by signal N (SIGTERM, SIGHUP: the running stage is stopped with what it started, and
    the outputs are written once more).
    """
)


USAGE_ERROR = 2
"""Exit status of a usage error (the epilog's promise), as argparse's own."""


class UsageError(ValueError):
    """A usage error found after parsing, before any work: one line, exit status :data:`USAGE_ERROR`."""


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _budget(text: str) -> tuple[str, int]:
    name, _, seconds = text.partition("=")
    try:
        return name.strip(), int(seconds)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected NAME=SECONDS, got {text!r}") from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The check's options (shared by ``python -m deftx.gpucheck`` and ``deftx gpu-check``)."""
    parser.add_argument("--out", type=path_text, metavar="DIR", help="output folder (required unless --dry-run)")
    parser.add_argument("--only", type=_names, default=(), metavar="STAGES",
                        help=f"comma-separated stages to run (default: all of {','.join(STAGE_NAMES)})")
    parser.add_argument("--skip", type=_names, default=(), metavar="STAGES", help="comma-separated stages to skip")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="cuda, cpu, or auto (cuda when torch sees a GPU)")
    parser.add_argument("--shapes", choices=("full", "tiny"), default=None,
                        help="full: XLM-R base, Llama-2-7B, GB-sized buffers (default on CUDA); "
                        "tiny: the same code at toy sizes (default on CPU)")
    parser.add_argument("--budget", type=positive_float, default=TOTAL_BUDGET_S, metavar="SECONDS",
                        help="seconds for the whole check, > 0: stages starting later are skipped "
                        f"(default {TOTAL_BUDGET_S:g})")
    parser.add_argument("--budget-of", type=_budget, action="append", default=[], metavar="NAME=SECONDS",
                        help="replace a stage's budget (repeatable)")
    parser.add_argument("--work-dir", type=path_text, default=None, metavar="DIR",
                        help="where stages write before the bundle (default: a new folder under the temp dir)")
    parser.add_argument("--test-paths", type=_names, default=("tests",), metavar="PATHS",
                        help="comma-separated paths the tests stage runs pytest -m cuda over (default tests)")
    parser.add_argument("--pytest-workers", type=seed_int, default=4, metavar="N",
                        help="pytest-xdist workers in the tests stage where xdist is installed, >= 0 "
                        "(0: none; default 4)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")


def build_parser() -> argparse.ArgumentParser:
    stages = "\n".join(f"  {s.name:12s} {s.budget_s:4d}  {s.what}" for s in STAGES)
    parser = argparse.ArgumentParser(prog="python -m deftx.gpucheck", description=DESCRIPTION,
                                     epilog=EPILOG.format(stages=stages),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    refuse_repeated_options(parser)
    add_arguments(parser)
    return parser


def find_tool(name: str) -> str | None:
    """``name`` on PATH, else in the usual CUDA / Nsight Compute install folders."""
    found = shutil.which(name)
    if found:
        return found
    candidates = [f"/usr/local/cuda/bin/{name}", *sorted(glob.glob(f"/usr/local/cuda-*/bin/{name}")),
                  *sorted(glob.glob(f"/opt/nvidia/nsight-compute/*/{name}"))]
    return next((c for c in reversed(candidates) if Path(c).is_file()), None)


def resolve_device(requested: str) -> str:
    import torch

    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise UsageError("--device cuda but torch sees no CUDA device")
    if requested == "auto":
        return "cuda" if available else "cpu"
    return requested


def gpu_name(device: str) -> str | None:
    """The GPU's name from nvidia-smi (no CUDA context in this process), else from torch."""
    if device != "cuda":
        return None
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                              check=False, timeout=30)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.splitlines()[0].strip()
    import torch

    return torch.cuda.get_device_name(0)


def repository_root() -> Path:
    """The checkout deftx is imported from (where setup.py and tests/ are)."""
    return Path(__file__).resolve().parent.parent.parent


def make_plan(args: argparse.Namespace, device: str, tools: dict[str, str | None]) -> list[PlannedStage]:
    """The stages of this run; :class:`UsageError` on bad names or budgets, or when none would run."""
    try:
        stages = with_budgets(STAGES, dict(args.budget_of))
        planned = plan_stages(stages, only=args.only, skip=args.skip, has_cuda=device == "cuda",
                              tools={name: path is not None for name, path in tools.items()},
                              total_budget_s=args.budget)
    except ValueError as err:
        raise UsageError(str(err)) from err
    empty = empty_plan_reason(planned, args.only)
    if empty is not None:
        raise UsageError(empty)
    return planned


def empty_plan_reason(planned: list[PlannedStage], only: tuple[str, ...]) -> str | None:
    """Why no stage of ``planned`` would run (each selected stage's reason), or None when one does."""
    if any(p.runs for p in planned):
        return None
    selected = [p for p in planned if not only or p.stage.name in only]
    reasons = "; ".join(f"{p.stage.name}: {p.skip_reason}" for p in selected)
    return f"no stage left to run ({reasons})"


def check_out(args: argparse.Namespace) -> None:
    """--out given (unless --dry-run), it and --work-dir folders that can be made and written: before any work."""
    from deftx.perf.report import output_folder_problem

    if args.dry_run:
        return
    if not args.out:
        raise UsageError("--out DIR is required (or --dry-run)")
    for option, folder in (("--out", args.out), ("--work-dir", args.work_dir)):
        problem = None if folder is None else output_folder_problem(folder)
        if problem is not None:
            raise UsageError(f"{option} {folder}: {problem}")


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """The check; a usage error is one line on stderr and exit status :data:`USAGE_ERROR`."""
    try:
        return checked_run(args, argv)
    except UsageError as err:
        print(f"deftx gpu-check: error: {err}", file=sys.stderr)
        return USAGE_ERROR


def checked_run(args: argparse.Namespace, argv: list[str]) -> int:
    from deftx.gpucheck.outputs import result_prefix

    device = resolve_device(args.device)
    sizes = args.shapes or ("full" if device == "cuda" else "tiny")
    tools = {name: find_tool(name) for name in ("ncu", "compute-sanitizer")}
    planned = make_plan(args, device, tools)
    check_out(args)
    prefix = result_prefix(device, gpu_name(device))
    print(f"deftx gpu-check: device {device}, sizes {sizes}, result prefix {prefix}")
    print("\n".join(plan_lines(planned, args.budget)))
    if args.dry_run:
        return 0
    return execute(args, argv, planned, device, sizes, prefix, tools)


def execute(args: argparse.Namespace, argv: list[str], planned: list[PlannedStage], device: str, sizes: str,
            prefix: str, tools: dict[str, str | None]) -> int:
    from deftx.gpucheck.processes import Stopped, stopping_on_signals
    from deftx.gpucheck.runner import RunSettings, run_check
    from deftx.gpucheck.summary import console_lines

    out = Path(args.out).resolve()
    work = Path(args.work_dir).resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="deftx-gpucheck-"))
    if out == work or work.is_relative_to(out):
        raise UsageError("--work-dir must be outside --out (only the bundle goes back)")
    work.mkdir(parents=True, exist_ok=True)
    command = "python -m deftx.gpucheck " + " ".join(shlex.quote(a) for a in argv)
    settings = RunSettings(out_dir=out, work_dir=work, repo=repository_root(), device=device, sizes=sizes,
                           prefix=prefix, total_budget_s=args.budget, tools=tools, test_paths=args.test_paths,
                           pytest_workers=args.pytest_workers, command=command)
    meta = {"command": command, "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device, "sizes": sizes, "prefix": prefix, "total_budget_s": args.budget,
            "work_dir": str(work), "tools": tools}
    print(f"working folder {work}; results into {out}", flush=True)
    try:
        with stopping_on_signals():
            summary = run_check(settings, planned, meta, say=lambda line: print(line, flush=True))
    except Stopped as stop:
        print(f"\n{stop}: wrote {', '.join(sorted(p.name for p in out.iterdir()))} into {out}", flush=True)
        return stop.exit_status
    print("\n".join(console_lines(summary)))
    print(f"\nwrote {', '.join(sorted(p.name for p in out.iterdir()))} into {out}")
    ran = [s for s in summary["stages"] if s["status"] != "skipped"]
    return 0 if all(s["status"] == "ok" for s in ran) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(parse_arguments(build_parser(), argv), argv)
