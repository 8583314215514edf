"""Stage ``training``: the two-phase sparse fine-tuning loop on the device, end to end.

A tiny random BERT classifier (synthetic task: the label is the first token id mod 3, no
downloads) inside a real ``transformers.Trainer`` on the device, through
:class:`~deftx.train.sparse_finetuner.SparseFineTuner`: phase 1 (full fine-tuning), the
LT-SFT and DeFT-X selections (global top-K; DeFT-X denoised by the randomized SVD), phase 3
(masked AdamW). On CUDA these are the Triton top-k, rSVD and masked step; the torch
profiler records which of deftx's Triton kernels ran. Then, each a named check:

* the SFT saved and loaded back is the same diff;
* applied to a fresh θ0 model with the device's backend (the Triton scatter on CUDA) it
  gives the same bits as the torch backend, and reverting restores θ0 bit for bit;
* the LT-SFT selection recomputed from the saved θ1 on the device and on the CPU equals the
  tuner's mask entry for entry (the DeFT-X masks' overlap is reported: randomized SVDs on
  two devices need not agree to the last entry).

Last, if time is left, ``deftx profile train-step`` on the device: a Chrome trace of one step
of each phase and its per-kernel summary (``trace_train_step.json``, ``profile_train_step.md``).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from deftx.gpucheck.context import StageContext
from deftx.models.parameters import named_parameter_map

VOCAB, LENGTH, LABELS = 512, 16, 3
STEPS = {"full": 40, "tiny": 4}
K_FRACTION = 0.05
TRACE_MIN_SECONDS = 15.0
"""Seconds that must be left before the deadline to record the train-step trace."""
EXPECTED_KERNELS: dict[str, tuple[str, ...]] = {
    "top-k": ("_partition_kernel", "_band_histogram_kernel", "_compact_indices_kernel"),
    "rSVD": ("_sketch_t_delta_kernel", "_delta_matmul_kernel"),
    "masked step": ("_masked_adamw_kernel",),
}
"""The kernels item 5 of the issue asks to see in the loop (any one name per op)."""
REPORTED_KERNELS = ("_reconstruct_abs_kernel", "_scatter_add_kernel", "_scatter_restore_kernel")
"""Reported when seen, not required (the fused |U S Vh| is not on the training path yet)."""


def tiny_bert(seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=LENGTH, num_labels=LABELS)
    return BertForSequenceClassification(config)


def synthetic_rows(n: int, seed: int) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=gen)
    return [{"input_ids": row, "labels": int(row[0]) % LABELS} for row in ids]


def check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "ok": bool(ok), "detail": detail}


@contextmanager
def kernel_names(device: torch.device):
    """Collects the names of the device kernels launched inside the block (CUDA only)."""
    seen: set[str] = set()
    if device.type != "cuda":
        yield seen
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        yield seen
    seen.update(e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def kernels_check(seen: set[str]) -> dict[str, Any]:
    """Which of deftx's expected Triton kernels ran (and which reported ones)."""
    missing = {op: names for op, names in EXPECTED_KERNELS.items() if not any(n in s for n in names for s in seen)}
    known = [n for names in EXPECTED_KERNELS.values() for n in names] + list(REPORTED_KERNELS)
    ran = sorted({n for n in known if any(n in s for s in seen)})
    detail = f"ran: {', '.join(ran) or 'none'}" + (f"; missing: {', '.join(missing)}" if missing else "")
    return check("the Triton top-k, rSVD and masked step ran in the fit", not missing, detail)


def fit(ctx: StageContext, device: torch.device):
    """The tuner after ``fit()`` and its result."""
    from transformers import Trainer, TrainingArguments

    from deftx.train.config import DenoiseConfig, PhaseConfig, SparseFineTuningConfig
    from deftx.train.sparse_finetuner import SparseFineTuner

    steps = STEPS[ctx.sizes]
    args = TrainingArguments(
        output_dir=str(ctx.stage_dir / "trainer"), per_device_train_batch_size=16, report_to=[],
        save_strategy="no", logging_steps=max(1, steps // 4), disable_tqdm=True, use_cpu=device.type == "cpu",
        seed=0, dataloader_pin_memory=False,
    )
    trainer = Trainer(model=tiny_bert(0), args=args, train_dataset=synthetic_rows(512, 1))
    config = SparseFineTuningConfig(
        k=K_FRACTION,
        full=PhaseConfig(steps=steps, learning_rate=3e-3),
        sparse=PhaseConfig(steps=steps, learning_rate=3e-3),
        selections={"lt-sft": None, "deft-x": DenoiseConfig(energy=0.9)},
        train_head=True,
        ship_head=True,
    )
    tuner = SparseFineTuner(trainer, config, ctx.stage_dir / "work", base_model="deftx-gpucheck/tiny-bert",
                            progress=False, keep_theta1=True)
    return tuner, tuner.fit()


def parameters(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in named_parameter_map(model).items()}


def bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n].view(torch.uint8), b[n].view(torch.uint8)) for n in a)


def apply_checks(diff, path: Path, device: torch.device) -> list[dict[str, Any]]:
    """Save and load the SFT; apply it with the device's backend and with torch; revert."""
    from deftx.sft import SparseDiff, apply_diffs

    diff.save(path)
    loaded = SparseDiff.load(path)
    same = loaded.indices.keys() == diff.indices.keys() and all(
        torch.equal(loaded.indices[n], diff.indices[n]) and torch.equal(loaded.values[n], diff.values[n])
        for n in diff.indices
    )
    checks = [check("the SFT saved and loaded back is the same diff", same, f"{loaded}")]
    model = tiny_bert(0).to(device)
    theta0 = parameters(model)
    applied = {}
    for backend in ("auto", "torch"):
        handle = apply_diffs(model, [loaded], check_base=False, backend=backend)
        applied[backend] = parameters(model)
        handle.revert()
        checks.append(check(f"revert after applying with backend={backend} restores θ0 bit for bit",
                            bitwise_equal(parameters(model), theta0), f"{len(theta0)} parameters compared"))
    changed = sum(not torch.equal(applied["auto"][n], theta0[n]) for n in theta0)
    checks.append(check(f"applying on {device.type} (auto backend) equals the torch backend bit for bit",
                        bitwise_equal(applied["auto"], applied["torch"]), f"{changed} parameters changed by the SFT"))
    return checks


def selection_checks(tuner, result, device: torch.device) -> list[dict[str, Any]]:
    """LT-SFT: device == CPU == the tuner's mask; DeFT-X: overlap of device and CPU masks."""
    from deftx.train.checkpoint import load_tensors
    from deftx.train.config import DenoiseConfig
    from deftx.train.denoise import selection_scores
    from deftx.train.select import select_top_k

    theta0 = {n: p.detach().cpu() for n, p in named_parameter_map(tuner.trainer.model).items()}  # fit(): at θ0
    theta1 = load_tensors(tuner.work_dir / "theta1.safetensors")
    names = list(tuner.eligible)

    def select(on: torch.device, denoise) -> dict[str, torch.Tensor]:
        scores, _ = selection_scores({n: theta1[n].to(on) for n in names}, {n: theta0[n].to(on) for n in names},
                                     tuner.groups, denoise, progress=False)
        return {n: i.cpu() for n, i in select_top_k(scores, tuner.k).items()}

    stored = {n: result.diffs["lt-sft"].indices[tuner.stored_names[n]] for n in names}
    on_device, on_cpu = select(device, None), select(torch.device("cpu"), None)
    identical = all(torch.equal(on_device[n], on_cpu[n]) and torch.equal(on_cpu[n], stored[n]) for n in names)
    shared = sum(int(torch.isin(on_device[n], on_cpu[n]).sum()) for n in names)
    checks = [check(f"LT-SFT selection on {device.type} equals the CPU selection (and the tuner's mask), "
                    "entry for entry", identical, f"{shared}/{tuner.k} entries shared")]
    denoise = DenoiseConfig(energy=0.9)
    dx_device, dx_cpu = select(device, denoise), select(torch.device("cpu"), denoise)
    overlap = sum(int(torch.isin(dx_device[n], dx_cpu[n]).sum()) for n in names) / tuner.k
    checks.append(check(f"DeFT-X selection on {device.type} vs CPU (overlap, reported)", True,
                        f"{100 * overlap:.2f}% of {tuner.k} entries shared"))
    return checks


def train_step_trace(ctx: StageContext) -> dict[str, Any]:
    """``deftx profile train-step`` on the device into the stage folder (or why it was not recorded)."""
    if ctx.seconds_left() < TRACE_MIN_SECONDS:
        return {"skipped": f"under {TRACE_MIN_SECONDS:g} s left"}
    from deftx.perf.trace import TraceConfig, profile_target

    try:
        summary = profile_target(TraceConfig(target="train-step", device=ctx.device), ctx.stage_dir)
    except Exception as err:  # the trace is extra: its failure is reported, the checks stand
        return {"error": f"{type(err).__name__}: {err}"}
    return {"files": summary["files"], "phases": [r for r in summary["rows"] if r["kind"] == "phase"]}


def run(ctx: StageContext) -> dict[str, Any]:
    device = torch.device(ctx.device)
    with kernel_names(device) as seen:
        tuner, result = fit(ctx, device)
    ctx.write_result({"status": "ok", "headline": f"partial: fit done ({result.seconds})", "seconds": result.seconds})
    checks = [kernels_check(seen)] if device.type == "cuda" else []
    checks += apply_checks(result.diffs["lt-sft"], ctx.stage_dir / "lt-sft.safetensors", device)
    checks += selection_checks(tuner, result, device)
    for c in checks:
        print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}")
    failed = [c for c in checks if not c["ok"]]
    headline = (f"{len(checks) - len(failed)}/{len(checks)} checks passed; "
                + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
    outcome = {"status": "failed" if failed else "ok", "headline": headline, "checks": checks,
               "seconds": result.seconds, "kernels_seen": sorted(seen),
               "selections": {b: {k: v for k, v in s.items() if k != "groups"} for b, s in result.selections.items()}}
    ctx.write_result(outcome)
    return {**outcome, "train_step_trace": train_step_trace(ctx)}
