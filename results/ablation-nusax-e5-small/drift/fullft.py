"""Drift probe: the ablation reference's full fine-tuning for N steps (seed 0).

Prints hashes of the training examples, the initial classifier and the weights after N steps.
Usage (repository root): ``python fullft.py [N] [ABLATION_CONFIG]``; works with the layouts before
and after the pipeline moved from ``deftx.eval`` to ``deftx.pipeline``.
"""

import dataclasses
import hashlib
import json
import sys
import tempfile
from pathlib import Path

from deftx.train.task import build_classifier

try:
    from deftx.pipeline import steps as pipeline_steps
    from deftx.pipeline.ablation import load_ablation
    from deftx.pipeline.workspace import Workspace
except ImportError:
    import deftx.eval.pipeline as pipeline_steps
    from deftx.eval.ablation import load_ablation
    from deftx.eval.pipeline import Workspace

CONFIG = "configs/ablation-nusax-e5-small-language.yaml"


def short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def state_hash(model) -> str:
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def main(steps: int, config: str) -> None:
    tmp = Path(tempfile.mkdtemp())
    ablation = load_ablation(config, output_dir=str(tmp / "runs"), results_dir=str(tmp / "res"))
    reference = ablation.variants["reference"]
    reference = dataclasses.replace(
        reference, full_finetune=dataclasses.replace(reference.full_finetune, steps=steps, epochs=None))
    ws = Workspace.open(reference, log=lambda line: None)
    examples = pipeline_steps.nusax_train_examples(ws, "indonesian")
    out = {"examples": short_hash(json.dumps(examples, sort_keys=True).encode()), "n": len(examples),
           "init": state_hash(build_classifier(ws.model_dir, 3, 0, reference.pooling))}
    model = pipeline_steps.full_finetune(ws, examples, 0, 3, ws.output_dir / "full")
    out["final"] = state_hash(model.cpu())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6, sys.argv[2] if len(sys.argv) > 2 else CONFIG)
