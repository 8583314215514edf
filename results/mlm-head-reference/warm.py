"""Warm the NusaX reference MLM head (configs/nusax-e5-small-final.yaml's mlm_head) through the pipeline's own path."""

import dataclasses
import time

from deftx.pipeline.config import load_config
from deftx.pipeline.head import ensure_head
from deftx.pipeline.workspace import Workspace

config = dataclasses.replace(load_config("configs/nusax-e5-small-final.yaml"), output_dir="runs/mlm-head-reference")
start = time.time()
path = ensure_head(Workspace.open(config))
print("head:", path, f"{time.time() - start:.0f} s", flush=True)
