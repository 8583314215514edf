"""Warm the NusaX reference MLM head (configs/nusax-e5-small-final.yaml's mlm_head) through the pipeline's own path."""
import dataclasses, sys, time
from deftx.pipeline.config import load_config
from deftx.pipeline.workspace import Workspace
from deftx.pipeline.head import ensure_head

config = load_config("configs/nusax-e5-small-final.yaml")
config = dataclasses.replace(config, output_dir="runs/mlm-head-reference")
start = time.time()
ws = Workspace.open(config)
path = ensure_head(ws)
print("head:", path, f"{time.time() - start:.0f} s", flush=True)
