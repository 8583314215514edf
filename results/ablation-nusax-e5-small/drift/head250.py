"""Drift probe: the ablation reference's MLM head warm-up for 250 steps; held-out losses at 0 and 250."""

import dataclasses
import tempfile
from pathlib import Path

from deftx.train.language import warm_up_head

try:
    from deftx.pipeline.ablation import load_ablation
    from deftx.pipeline.head import head_texts
    from deftx.pipeline.workspace import Workspace
except ImportError:
    from deftx.eval.ablation import load_ablation
    from deftx.eval.pipeline import Workspace, head_texts

CONFIG = "configs/ablation-nusax-e5-small-language.yaml"


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    reference = load_ablation(CONFIG, output_dir=str(tmp / "runs"), results_dir=str(tmp / "res")).variants["reference"]
    ws = Workspace.open(reference, log=lambda line: None)
    settings = dataclasses.replace(reference.mlm_head, steps=250)
    _, metrics = warm_up_head(ws.model_dir, ws.tokenizer, head_texts(ws), settings, tmp / "cache")
    for point in metrics["heldout_curve"]:
        print(point["step"], repr(point["groups"]["nusax"]["loss"]), repr(point["groups"]["americasnlp"]["loss"]))
    print("first losses", metrics["loss"][:3])


if __name__ == "__main__":
    main()
