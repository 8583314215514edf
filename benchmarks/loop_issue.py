"""Warp instructions per element of the top-k's loops over the data, from the SASS (no GPU).

The roofline of ``deftx profile --static`` has no term for instructions, and the H200 run showed
the top-k's radix histogram pass bound by them (8-22% of the copy bandwidth). This script
compiles the top-k specialisations that stream over the data for ``--arch`` with the installed
Triton, walks the unmasked path of one iteration of each one's loop
(:meth:`deftx.perf.static.sass.Sass.vector_path_length`) and divides by the elements a warp
handles per iteration (``TILE / num_warps``). The issue bound beside it: the elements per second
at which the SMs would issue that many warp instructions per element at one per scheduler per
clock (132 SMs x 4 schedulers x 1.98 GHz on the H200), as a share of the copy bandwidth
measured there (bytes read once, as the histogram stage counts them). PREDICTED, not measured.

    python benchmarks/loop_issue.py --arch sm_90 --out results/loop-issue
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import triton

from deftx.perf.static.compile import KernelBuild, compile_spec, declared_specializations
from deftx.perf.targets import get_target

STREAMING_KERNELS = ("_partition_kernel", "_band_histogram_kernel")
"""The top-k kernels whose loop reads the data (the count is ``_partition_kernel`` without WRITE)."""
H200_WARP_ISSUE_PER_S = 132 * 4 * 1.98e9
"""Warp instructions per second the H200 issues at one per scheduler per clock (SM clock 1980
MHz under load, read with nvidia-smi on the device machine)."""
H200_COPY_BYTES_PER_S = 4.23e12
"""Copy bandwidth measured on the H200 (run 2, read + write)."""
ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def loop_row(build: KernelBuild) -> dict[str, object]:
    """One specialisation: its path length, elements per warp per iteration and issue bound."""
    tile = int(build.constexprs["TILE"])
    per_warp = tile // build.num_warps
    path = build.sass.vector_path_length()
    row: dict[str, object] = {"name": build.name, "warps": build.num_warps, "registers": build.registers,
                              "stack_bytes": build.stack_bytes, "elements_per_warp": per_warp,
                              "path_instructions": path}
    if path:
        per_element = path / per_warp
        dtype = build.constexprs["DTYPE"]
        read_bytes = ELEMENT_BYTES[dtype] * (2 if build.constexprs.get("HAS_BASE") == "True" else 1)
        bound = H200_WARP_ISSUE_PER_S / per_element * read_bytes
        row.update(warp_instructions_per_element=per_element, issue_bound_pct_of_copy=100 * bound
                   / H200_COPY_BYTES_PER_S)
    return row


def markdown(doc: dict[str, object]) -> str:
    lines = [f"# Top-k loops over the data: warp instructions per element ({doc['arch']}, Triton "
             f"{doc['triton']}) — PREDICTED", "", f"`{doc['command']}` ({doc['wall_s']:.0f} s)", "",
             "The issue bound is an upper bound from issue slots alone: shared-memory atomics, the "
             "lower throughput of shuffles and memory stalls are not counted.", "",
             "| specialisation | warps | registers | path instructions / iteration | elements / warp | "
             "warp instructions / element | issue bound, % of H200 copy |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        per = r.get("warp_instructions_per_element")
        lines.append(f"| `{r['name']}` | {r['warps']} | {r['registers']} | {r['path_instructions']} | "
                     f"{r['elements_per_warp']} | {per:.2f} | {r['issue_bound_pct_of_copy']:.0f}% |" if per else
                     f"| `{r['name']}` | {r['warps']} | {r['registers']} | - | {r['elements_per_warp']} | - | - |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sm_90", choices=("sm_80", "sm_90"))
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for loop_issue_<arch>_triton<version>.{json,md}")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    target = get_target(args.arch)
    rows = []
    for declared in declared_specializations().specs:
        spec = declared.spec
        if declared.module != "topk" or spec.kernel.fn.__name__ not in STREAMING_KERNELS:
            continue
        build = compile_spec(spec, target, module=declared.module)
        rows.append(loop_row(build))
        print(f"{build.name}: {rows[-1].get('warp_instructions_per_element', '-')}", flush=True)
    doc = {"arch": args.arch, "triton": triton.__version__, "command": " ".join(["python", *sys.argv]),
           "wall_s": time.perf_counter() - start, "label": "PREDICTED (SASS path length; no GPU)", "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"loop_issue_{args.arch.replace('_', '')}_triton{triton.__version__}"
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(doc))
    print(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
