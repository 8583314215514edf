#!/bin/bash
# git bisect run step (run in the worktree WORKTREE being bisected; MAIN: a checkout that has this folder):
# exit 0 = the full fine-tuning's 6-step weights as at 97afbcb (1ebee2a7...), 1 = changed, 125 = cannot run.
MAIN=${MAIN:-/work/main} WORKTREE=${WORKTREE:-$PWD} PYTHON=${PYTHON:-python}
here=$MAIN/results/ablation-nusax-e5-small/drift
cd "$MAIN" || exit 125
out=$(USE_HUB_KERNELS=0 nice -n 5 "$PYTHON" "$here/run_at.py" "$WORKTREE" "$here/fullft.py" 6 2>/dev/null | grep '"final"')
echo "$(git -C "$WORKTREE" rev-parse --short HEAD) $out" >> "$here/bisect-log.txt"
case "$out" in *1ebee2a7ccefbb4e*) exit 0;; "") exit 125;; *) exit 1;; esac
