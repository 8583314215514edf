#!/bin/bash
# DeFT-X's denoising on NusaX valid (NOTES.md): one invocation, 76.9 min on 2 cores, 2026-12-05.
# It links the final table's seed 3-5 steps from runs/ablation-nusax-e5-small/shared: run
# results/nusax-e5-small-final/COMMANDS.sh's seeds 3-5 first on a fresh machine (else every
# phase 1 and branch of theirs trains here too).
set -x
cd "$(dirname "$0")/../.."   # the repository root
/usr/bin/time -v deftx ablate configs/ablation-nusax-e5-small-denoise.yaml
