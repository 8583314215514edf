"""Run files: complete-or-absent checkpoints, a log that holds each step once, unique temporaries."""

from __future__ import annotations

import json
import threading

import torch

from deftx.train.checkpoint import (
    discard_incomplete_checkpoints,
    last_checkpoint,
    load_tensors,
    save_tensors,
    trim_log,
)
from deftx.train.seeding import phase_seed, seeded_rng


def checkpoint(folder, step, state_text=None):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    (path / "rng_state.pth").write_bytes(b"rng")
    text = json.dumps({"global_step": step}) if state_text is None else state_text
    (path / "trainer_state.json").write_text(text)
    return path


def test_only_complete_checkpoints_count(tmp_path):
    checkpoint(tmp_path, 2)
    checkpoint(tmp_path, 4, state_text='{"global_step": 4, "log_hist')  # killed mid-write
    checkpoint(tmp_path, 6, state_text=json.dumps({"global_step": 5}))  # another step's state
    (tmp_path / "checkpoint-8").mkdir()  # killed before the state
    (checkpoint(tmp_path, 10) / "rng_state.pth").unlink()  # save_only_model: no optimizer, scheduler nor RNG
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    discard_incomplete_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]


def test_trim_log_drops_the_steps_a_phase_runs_again_and_torn_lines(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [{"phase": "full", "step": s} for s in (1, 2, 3)] + [{"phase": "sparse:a", "step": s} for s in (1, 2)]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"phase": "sparse:a", "st')
    trim_log(log, "sparse:a", 1)
    kept = [json.loads(line) for line in log.read_text().splitlines()]
    assert kept == records[:4]
    trim_log(log, "full", 0)
    assert [json.loads(line) for line in log.read_text().splitlines()] == [records[3]]


def test_concurrent_saves_of_one_file_never_collide(tmp_path):
    path = tmp_path / "theta.safetensors"
    errors = []

    def save(value):
        try:
            for _ in range(20):
                save_tensors(path, {"w": torch.full((64,), float(value))})
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=save, args=(v,)) for v in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    w = load_tensors(path)["w"]
    assert torch.equal(w, torch.full((64,), float(w[0]))) and int(w[0]) in range(4)
    assert [p.name for p in tmp_path.iterdir()] == ["theta.safetensors"]


def test_a_phase_seed_depends_on_the_run_seed_and_phase_only():
    assert phase_seed(7, "full") == phase_seed(7, "full")
    assert len({phase_seed(7, "full"), phase_seed(7, "sparse"), phase_seed(8, "full")}) == 3


def test_seeded_rng_gives_the_phase_stream_and_restores_the_callers():
    torch.manual_seed(123)
    with seeded_rng(5):
        inside = torch.rand(3)
    after = torch.rand(3)
    torch.manual_seed(999)
    with seeded_rng(5):
        assert torch.equal(torch.rand(3), inside)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)
