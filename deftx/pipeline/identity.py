"""What a pipeline config's results depend on: the identity that ablation variants are hashed by
and that a results folder's earlier seeds must share with a run that adds seeds to it."""

from __future__ import annotations

from typing import Any

from deftx.ops.denoise import ENERGY_SKETCH_RULE
from deftx.pipeline.config import RECORDED_RULES, RUN_ONLY_SETTINGS, PipelineConfig
from deftx.pipeline.workspace import requested_device
from deftx.train.config import to_plain
from deftx.train.identity import SHORT_DIGEST, digest
from deftx.train.trainer_args import RUN_ONLY_ARGUMENTS

DEVICE_ARGUMENT = "use_cpu"
"""The ``TrainingArguments`` field that only says the device, which the identity records as ``device``
(:func:`~deftx.pipeline.workspace.requested_device` reads it)."""
NOT_RESULTS = ("name", "output_dir", "results_dir", "step_store", "seeds")
"""Top-level settings that say where or for which seeds a config runs, not what it computes."""
LATER_SETTINGS: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("device",), "cpu"),
    (("training", "arguments"), {}),
    (("americasnlp_text_splits",), ["train", "dev"]),
)
"""Settings the identity gained after results were first committed, each with the value all of
those results were made with: at that value a setting is left out of the identity, so that
recording a new setting does not orphan the results already committed (their hashes stay valid)."""


RULES = RECORDED_RULES
"""The key of :func:`run_identity` (and of a results folder's ``config.json``) under which :func:`method_rules`
are recorded."""


RULE_NOTES = {
    f"{RULES}.energy_sketch": "the randomized SVD's energy policy keeps spare sketch columns since "
                              "ENERGY_SKETCH_RULE 2: DeFT-X rows of before are not mixed with those of after",
}
"""What a change of a method rule means, added to the line naming it."""


def with_rule_note(line: str) -> str:
    """A change line (:func:`~deftx.train.identity.describe_changes`) with what its method rule's change means
    (:data:`RULE_NOTES`); any other line as it is."""
    note = RULE_NOTES.get(line.split(":", 1)[0])
    return f"{line} ({note})" if note else line


def method_rules(config: PipelineConfig) -> dict[str, int]:
    """Versions of deftx's own rules that changed what ``config``'s methods select, for the rules its
    methods use: ``energy_sketch`` (:data:`~deftx.ops.denoise.ENERGY_SKETCH_RULE`) when a method denoises
    with the randomized SVD's energy policy. Results of an older rule recorded none, so their recipe
    differs from a run's under the rule now and the two are never mixed in one table."""
    energy_sketch = any(denoise is not None and denoise.uses_energy_sketch() for denoise in config.methods.values())
    return {"energy_sketch": ENERGY_SKETCH_RULE} if energy_sketch else {}


def run_identity(config: PipelineConfig) -> dict[str, Any]:
    """Everything in ``config`` that can change a result (not its name, paths, seeds, checkpoint /
    logging intervals, progress bars, nor, as in each step's own identity, the ``TrainingArguments`` of
    :data:`~deftx.train.trainer_args.RUN_ONLY_ARGUMENTS`, nor :data:`DEVICE_ARGUMENT`, which the device
    says), JSON-ready: what a variant folder records.

    The device is the one the config asks for here (:func:`~deftx.pipeline.workspace.requested_device`:
    ``auto`` is no device), so results of another device are never mixed in. A setting in
    :data:`LATER_SETTINGS` at the value every earlier result had is left out (the CPU, no extra
    Trainer arguments, AmericasNLP train+dev text). The :func:`method_rules` its methods use are
    recorded under :data:`RULES`.
    """
    plain = to_plain(config)
    for key in NOT_RESULTS:
        plain.pop(key)
    for key in RUN_ONLY_SETTINGS:
        plain["training"].pop(key)
    arguments = plain["training"]["arguments"]
    plain["training"]["arguments"] = {key: value for key, value in arguments.items()
                                      if key not in RUN_ONLY_ARGUMENTS and key != DEVICE_ARGUMENT}
    identity = {**plain, "device": requested_device(config)}
    for path, earlier in LATER_SETTINGS:
        *parents, leaf = path
        node = identity
        for part in parents:
            node = node[part]
        if node[leaf] == earlier:
            del node[leaf]
    rules = method_rules(config)
    if rules:
        identity[RULES] = rules
    return identity


def recipe_hash(config: PipelineConfig) -> str:
    """The digest of :func:`run_identity`, shortened: an ablation variant's folder and rows, and every
    ``results.csv`` row of a pipeline run, carry it."""
    return digest(run_identity(config))[:SHORT_DIGEST]
