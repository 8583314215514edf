"""Settings of a sparse fine-tuning run, with defaults from the LT-SFT and DeFT-X papers.

Reference numbers (cambridgeltl/composable-sft, XLM-R base, ≈278M parameters):

* language SFT: K = 7,667,712 (≈ 2.8% of the parameters), lr 5e-5, L1 pull toward θ0
  with coefficient 0.1 in both phases, LayerNorms frozen, MLM decoder frozen;
* task SFT: K = 14,155,776 (≈ 5.1%), lr 2e-5, 5 epochs full + 5 epochs sparse, no L1.

Here K is scaled to the model as a fraction of the *eligible* parameters
(:data:`LANGUAGE_K_FRACTION`, :data:`TASK_K_FRACTION`).

The L1 term follows the reference trainer: the penalty added to the loss is
``l1 * Σ_eligible |θ − θ0| / N`` with ``N`` the total parameter count of the model being
trained (every parameter, trainable or not), so its gradient per entry is
``(l1 / N) · sign(θ − θ0)``. Under Adam this still matters: for an entry whose loss
gradient is ~0 it is the whole gradient, and it pulls the entry back to θ0.

DeFT-X: the rank policy and which matrices are denoised are not published; both are
options (default: keep 90% of each Δ's spectral energy, denoise every eligible 2-D
matrix). The "add back the magnitude-pruned residual" variant comes from a secondary
source only and is off by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any

from deftx.ops.settings import LowRankSettings
from deftx.text import short_repr
from deftx.train.params import check_eligible

if TYPE_CHECKING:
    from transformers import TrainingArguments

DEFAULT_ENERGY = 0.9
LANGUAGE_K_FRACTION = 0.028
TASK_K_FRACTION = 0.051
DENOISE_GROUPS: tuple[str, ...] = ("word_embeddings", "embeddings", "attention", "ffn")
DEFAULT_ELIGIBLE: tuple[str, ...] = ("word_embeddings", "embeddings", "attention", "ffn", "other")


@dataclass
class PhaseConfig:
    """Length, learning rate and L1 of one training phase.

    Exactly one of ``steps`` (optimizer steps) and ``epochs`` is set.
    """

    steps: int | None = None
    epochs: float | None = None
    learning_rate: float = 5e-5
    l1: float = 0.0

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(f"PhaseConfig: set exactly one of steps / epochs, got {self}")
        if self.steps is not None and not is_count(self.steps, 1):
            raise ValueError(f"PhaseConfig: steps must be an integer >= 1, got {short_repr(self.steps)}")
        if self.epochs is not None and not (is_number(self.epochs) and self.epochs > 0):
            raise ValueError(f"PhaseConfig: epochs must be a finite number > 0, got {short_repr(self.epochs)}")
        if not (is_number(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(
                f"PhaseConfig: learning_rate must be a finite number > 0, got {short_repr(self.learning_rate)}"
            )
        if not (is_number(self.l1) and self.l1 >= 0):
            raise ValueError(f"PhaseConfig: l1 must be a finite number >= 0, got {short_repr(self.l1)}")

    @classmethod
    def from_training_arguments(cls, args: TrainingArguments, l1: float = 0.0) -> PhaseConfig:
        """The phase your ``TrainingArguments`` describe: their ``max_steps`` (when > 0) or
        ``num_train_epochs``, and their ``learning_rate``; ``l1`` as given.

        Use it as ``SparseFineTuningConfig.full`` to run phase 1 with your own length and rate.
        """
        if args.max_steps is not None and args.max_steps > 0:
            return cls(steps=int(args.max_steps), learning_rate=float(args.learning_rate), l1=l1)
        return cls(epochs=float(args.num_train_epochs), learning_rate=float(args.learning_rate), l1=l1)


@dataclass
class DenoiseConfig:
    """DeFT-X's low-rank denoising of each eligible 2-D weight difference.

    Attributes:
        energy: keep the fewest singular components holding this fraction of ``||Δ||²``
            (:data:`DEFAULT_ENERGY` when neither energy nor rank is given).
        rank: or keep this many components in every matrix (one uniform rank, >= 1: at rank 0 every
            denoised score is 0, and the selection in those matrices falls to the first entries by
            position). It, ``oversample``, ``n_iter`` and ``seed`` may be given as integral floats
            (``8.0``) and are stored as ints.
        method: ``"randomized"`` (sketched SVD) or ``"exact"`` (``torch.linalg.svd``).
        groups: which parameter groups' matrices are denoised; other matrices and every
            1-D parameter are ranked by their raw ``|Δ|``.
        add_back_residual: add the magnitude-pruned discarded part back (secondary source).
        residual_keep: fraction of each matrix's residual entries kept (largest ``|R|``)
            when ``add_back_residual`` is on.
        oversample, n_iter, seed: randomized-SVD sketch settings.
    """

    energy: float | None = None
    rank: int | None = None
    method: str = "randomized"
    groups: tuple[str, ...] = DENOISE_GROUPS
    add_back_residual: bool = False
    residual_keep: float = 0.1
    oversample: int = 8
    n_iter: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank is None and self.energy is None:
            self.energy = DEFAULT_ENERGY
        if self.rank is not None and self.energy is not None:
            raise ValueError("DenoiseConfig: set exactly one of rank / energy")
        if self.energy is not None and not (is_number(self.energy) and 0.0 < self.energy <= 1.0):
            raise ValueError(f"DenoiseConfig: energy must be in (0, 1], got {short_repr(self.energy)}")
        if self.rank is not None and not is_count(self.rank, 1):
            raise ValueError(f"DenoiseConfig: rank must be an integer >= 1, got {short_repr(self.rank)}")
        if self.method not in ("randomized", "exact"):
            raise ValueError(f"DenoiseConfig: method must be 'randomized' or 'exact', got {short_repr(self.method)}")
        if not isinstance(self.groups, (list, tuple)) or not all(isinstance(g, str) for g in self.groups):
            raise ValueError(f"DenoiseConfig: groups must be a list of group names, got {short_repr(self.groups)}")
        self.groups = tuple(self.groups)
        if not self.groups:
            raise ValueError("DenoiseConfig: groups is empty: nothing would be denoised, which is LT-SFT's raw |Δ| "
                             "selection (give that branch None)")
        unknown = set(self.groups) - {*DENOISE_GROUPS, "other"}
        if unknown:
            raise ValueError(f"DenoiseConfig: unknown groups {sorted(unknown)}; known: {[*DENOISE_GROUPS, 'other']}")
        if not isinstance(self.add_back_residual, bool):
            raise ValueError(f"DenoiseConfig: add_back_residual must be true or false, got "
                             f"{short_repr(self.add_back_residual)}")
        if not (is_number(self.residual_keep) and 0.0 <= self.residual_keep <= 1.0):
            raise ValueError(f"DenoiseConfig: residual_keep must be in [0, 1], got {short_repr(self.residual_keep)}")
        for name, minimum in (("oversample", 0), ("n_iter", 0), ("seed", 0)):
            if not is_count(getattr(self, name), minimum):
                raise ValueError(f"DenoiseConfig: {name} must be an integer >= {minimum}, got "
                                 f"{short_repr(getattr(self, name))}")
        for name in ("rank", "oversample", "n_iter", "seed"):
            if getattr(self, name) is not None:
                setattr(self, name, int(getattr(self, name)))

    def uses_energy_sketch(self) -> bool:
        """Whether this denoising widens a randomized sketch to an energy target (the rule whose version
        :data:`~deftx.ops.denoise.ENERGY_SKETCH_RULE` a step's identity and a results folder's recipe record)."""
        return self.method == "randomized" and self.energy is not None

    def lowrank(self) -> LowRankSettings:
        """The ops' settings of this denoising (fp32 products, the ops' default precision)."""
        return LowRankSettings(self.rank, self.energy, self.method, self.oversample, self.n_iter, self.seed)


@dataclass
class SparseFineTuningConfig:
    """Everything the :class:`~deftx.train.sparse_finetuner.SparseFineTuner` needs.

    Attributes:
        k: number of entries (int >= 1) or fraction of the eligible entries (0 < k < 1).
        full: phase 1 (full fine-tuning θ0 -> θ1).
        sparse: phase 3 (reset to θ0, train only the K selected entries).
        eligible: parameter groups that may enter the SFT (see :mod:`deftx.train.params`);
            LayerNorms are frozen (as in every reference example) unless listed here.
        selections: one phase-3 branch per entry, name -> denoising (None = LT-SFT's raw
            ``|Δ|``). Phase 1 runs once and every branch starts from the same θ1.
        train_head: train the parameters outside the body (classifier, MLM head) densely
            in both phases; they are shipped with the SFT as dense tensors when
            ``ship_head`` is set.
        ship_head: put the trained head into the SFT's ``dense`` tensors (task SFTs); needs a densely
            trained head (``train_head``, or the tuner's ``dense_names``).
    """

    k: float
    full: PhaseConfig
    sparse: PhaseConfig
    eligible: tuple[str, ...] = DEFAULT_ELIGIBLE
    selections: dict[str, DenoiseConfig | None] = field(
        default_factory=lambda: {"lt-sft": None, "deft-x": DenoiseConfig()}
    )
    train_head: bool = True
    ship_head: bool = False

    def __post_init__(self) -> None:
        check_k(self.k)
        for name in ("full", "sparse"):
            if not isinstance(getattr(self, name), PhaseConfig):
                raise ValueError(f"SparseFineTuningConfig: {name} must be a PhaseConfig, got "
                                 f"{short_repr(getattr(self, name))}")
        for name in ("train_head", "ship_head"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SparseFineTuningConfig: {name} must be true or false, got "
                                 f"{short_repr(getattr(self, name))}")
        try:
            self.eligible = check_eligible(self.eligible)
        except ValueError as err:
            raise ValueError(f"SparseFineTuningConfig: eligible: {err}") from err
        if not self.selections:
            raise ValueError("SparseFineTuningConfig: selections is empty")
        for name in self.selections:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"SparseFineTuningConfig: bad selection name {name!r}")
            if not isinstance(self.selections[name], (DenoiseConfig, type(None))):
                raise ValueError(f"SparseFineTuningConfig: selections[{name!r}] must be a DenoiseConfig or None "
                                 f"(LT-SFT), got {short_repr(self.selections[name])}")


def check_k(k: float) -> None:
    """Validate K: an integer count >= 1 or a fraction in (0, 1) (the float 1.0, either, is refused)."""
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise TypeError(f"k must be a number, got {type(k).__name__}")
    if not math.isfinite(k):
        raise ValueError(f"k must be a finite number, got {k!r}")
    if isinstance(k, float) and k == 1.0:
        raise ValueError("k = 1.0 is ambiguous: the count 1 (write the int 1) or every eligible entry (not a sparse "
                         "fine-tuning: a fraction must be below 1)")
    if isinstance(k, int) or k >= 1:
        if int(k) != k or k < 1:
            raise ValueError(f"k as a count must be an integer >= 1, got {k!r}")
    elif not 0.0 < k < 1.0:
        raise ValueError(f"k as a fraction must be in (0, 1), got {k!r}")


def is_number(value: object) -> bool:
    """An int or float (not a bool) that is neither infinite nor NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: object, minimum: int) -> bool:
    """An integer >= ``minimum`` (an int, or a float with an integral value; not a bool)."""
    return is_number(value) and int(value) == value and value >= minimum


def resolve_k(k: float, num_eligible: int) -> int:
    """The entry count K for ``k`` (count or fraction) out of ``num_eligible`` entries.

    Raises:
        ValueError: K larger than the eligible set, or a fraction that rounds to 0.
    """
    check_k(k)
    count = int(k) if (isinstance(k, int) or k >= 1) else round(k * num_eligible)
    if count < 1:
        raise ValueError(f"k = {k!r} of {num_eligible} eligible entries selects nothing")
    if count > num_eligible:
        raise ValueError(f"k = {count} exceeds the {num_eligible} eligible entries")
    return count


def language_sft_config(**overrides: Any) -> SparseFineTuningConfig:
    """The reference's language-SFT settings (K 2.8%, lr 5e-5, L1 0.1 in both phases), with phases of
    1,000 steps: the reference trains 10k-100k steps a phase (METHOD.md); pass ``full`` and ``sparse``
    for that."""
    settings: dict[str, Any] = {
        "k": LANGUAGE_K_FRACTION,
        "full": PhaseConfig(steps=1000, learning_rate=5e-5, l1=0.1),
        "sparse": PhaseConfig(steps=1000, learning_rate=5e-5, l1=0.1),
        "train_head": False,
        "ship_head": False,
    }
    settings.update(overrides)
    return SparseFineTuningConfig(**settings)


def task_sft_config(**overrides: Any) -> SparseFineTuningConfig:
    """Reference task-SFT settings: K 5.1%, lr 2e-5, 5 + 5 epochs, no L1, head shipped."""
    settings: dict[str, Any] = {
        "k": TASK_K_FRACTION,
        "full": PhaseConfig(epochs=5, learning_rate=2e-5),
        "sparse": PhaseConfig(epochs=5, learning_rate=2e-5),
        "train_head": True,
        "ship_head": True,
    }
    settings.update(overrides)
    return SparseFineTuningConfig(**settings)


def to_plain(value: Any) -> Any:
    """A JSON-ready copy of a (nested) config dataclass."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    return value
