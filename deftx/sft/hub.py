"""Hub-style SFT folders: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``.

A folder (or Hugging Face Hub repository) holds three files:

* ``sft.safetensors`` — the SparseDiff itself (:meth:`SparseDiff.save`); the one source of truth;
* ``sft_config.json`` — a small summary for people and tools: base model, architecture,
  method, K, pooling, number of labels, label names (derived from the file, checked on load);
* ``README.md`` — a generated model card: method, K, data and scores when known, usage.

A repository id is resolved through the Hub cache (``huggingface_hub.snapshot_download``):
once the files are cached, loading works offline (``HF_HUB_OFFLINE=1`` or
``local_files_only=True``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deftx.sft.foreign import describe_folder
from deftx.sft.format import FORMAT_NAME, FORMAT_VERSION, SparseDiffFormatError

if TYPE_CHECKING:
    from deftx.sft.diff import SparseDiff

SFT_FILE = "sft.safetensors"
CONFIG_FILE = "sft_config.json"
CARD_FILE = "README.md"
INFO_KEYS = ("architecture", "pooling", "num_labels", "labels")
UNCHECKED_KEYS = ("format_version",)  # the file's own version is checked when it is read


class HubFolderError(FileNotFoundError):
    """A name is neither a local SFT folder nor a Hub repository that can be reached or is cached."""


def resolve_folder(
    name_or_path: str | os.PathLike,
    files: Sequence[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """A local folder holding ``files``: ``name_or_path`` itself, or the Hub snapshot of that repo id.

    A repo id is fetched with ``huggingface_hub.snapshot_download`` (only ``files``), which
    answers from the cache when offline (``HF_HUB_OFFLINE=1``) or with ``local_files_only``.

    Raises:
        HubFolderError: not a folder, and the repository is neither reachable nor cached.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise HubFolderError(f"{path} is a file; expected a folder or a Hub repository id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = snapshot_download(
            str(name_or_path), revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
            allow_patterns=list(files), token=token,
        )
    except HFValidationError as err:
        raise HubFolderError(f"{name_or_path!r} does not exist locally and is not a valid Hub repository id") from err
    except (LocalEntryNotFoundError, RepositoryNotFoundError, OSError) as err:
        raise HubFolderError(
            f"{name_or_path!r} is not a local folder, and the Hub repository could not be reached or found in the "
            f"Hub cache ({type(err).__name__}: {err}); download it once with a network, then it loads offline"
        ) from err
    return Path(folder)


def sft_config(diff: SparseDiff) -> dict[str, Any]:
    """The ``sft_config.json`` of ``diff``: what it applies to and how it was made."""
    config: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "base_model": diff.base_model,
        "method": diff.method,
        "k": diff.k,
        "nnz": diff.nnz,
        "parameters": len(diff.indices),
        "dense": sorted(diff.dense),
    }
    config.update({key: diff.info.get(key) for key in INFO_KEYS})
    return config


def _yaml_list(values: Sequence[str]) -> list[str]:
    return [f"- {json.dumps(v)}" for v in values]


def _scores_table(scores: Mapping[str, Any]) -> list[str]:
    """A markdown table of ``scores``: a flat name -> number mapping, or name -> {metric: number}."""
    rows = {name: value if isinstance(value, Mapping) else {"score": value} for name, value in scores.items()}
    metrics = list(dict.fromkeys(m for value in rows.values() for m in value))
    lines = ["| | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name, value in rows.items():
        cells = [f"{v:.4g}" if isinstance(v, (int, float)) else str(v) for v in (value.get(m, "") for m in metrics)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def hub_model_id(name: str | None) -> str | None:
    """``name`` when it can be a Hub model id (``name`` or ``org/name``, not a folder here), else None: the
    Hub refuses a card whose ``base_model`` is anything else (a local path the base was loaded from)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not name or Path(name).expanduser().is_dir():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def model_card(diff: SparseDiff, repo_id: str | None = None) -> str:
    """A README.md for the SFT: front matter for the Hub (``base_model`` only as a Hub id,
    :func:`hub_model_id`), method, K, data, scores, usage."""
    info = diff.info
    front = ["---", "library_name: deftx", "tags:", *_yaml_list(["deftx", "sparse-fine-tuning", diff.method])]
    if hub_model_id(diff.base_model):
        front.append(f"base_model: {json.dumps(diff.base_model)}")
    front.append("---")
    title = repo_id or info.get("name") or f"{diff.method} sparse fine-tuning"
    what = info.get("task") or ("a task" if diff.dense else "a language or task")
    body = [
        f"# {title}", "",
        f"A sparse fine-tuning (SFT) of `{diff.base_model or 'an unnamed base model'}` for {what}, made with "
        f"deftx: a sparse difference θ − θ0 to add onto the base model's weights.", "",
        f"- method: **{diff.method}**",
        f"- K (selected entries): **{diff.k:,}**; stored entries: {diff.nnz:,} over {len(diff.indices)} parameters",
    ]
    if diff.dense:
        body.append(f"- shipped whole (replace the model's): {', '.join(f'`{n}`' for n in sorted(diff.dense))}")
    for key in ("architecture", "pooling"):
        if info.get(key) is not None:
            body.append(f"- {key}: {info[key]}")
    if info.get("num_labels") is not None:
        names = ", ".join(map(str, info.get("labels") or []))
        body.append(f"- labels: {info['num_labels']}" + (f" ({names})" if names else ""))
    if info.get("language"):
        body.append(f"- language: {info['language']}")
    body += ["", "## Data", "", str(info["data"]) if info.get("data") else "Not recorded.", ""]
    if info.get("scores"):
        body += ["## Scores", "", *_scores_table(info["scores"]), ""]
    source = repo_id or "path/to/this/folder"
    body += [
        "## Use", "",
        "```python",
        "from deftx.sft import SparseDiff",
        "",
        f"sft = SparseDiff.from_pretrained({source!r})",
        "handle = sft.apply(model)     # model: the base model, loaded as the architecture above",
        "...                           # use the fine-tuned model",
        "handle.revert()               # the base weights again, bit for bit",
        "```", "",
    ]
    return "\n".join([*front, "", *body])


def save_pretrained(diff: SparseDiff, folder: str | os.PathLike, *, repo_id: str | None = None) -> Path:
    """Write ``sft.safetensors``, ``sft_config.json`` and a generated ``README.md`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    diff.save(folder / SFT_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(sft_config(diff), indent=2, sort_keys=True) + "\n")
    (folder / CARD_FILE).write_text(model_card(diff, repo_id))
    return folder


def check_config(config: Any, diff: SparseDiff, source: str) -> None:
    """``sft_config.json`` must describe the SparseDiff beside it (an edited folder is refused)."""
    if not isinstance(config, dict):
        raise SparseDiffFormatError(f"{source}: {CONFIG_FILE} must hold a JSON object")
    expected = sft_config(diff)
    for key in expected:
        if key not in UNCHECKED_KEYS and key in config and config[key] != expected[key]:
            raise SparseDiffFormatError(
                f"{source}: {CONFIG_FILE} says {key} = {config[key]!r}, but {SFT_FILE} holds {expected[key]!r}"
            )


def from_pretrained(
    cls: type[SparseDiff],
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> SparseDiff:
    """Load the SFT of a folder written by :func:`save_pretrained`, or of a Hub repository id, as a ``cls``."""

    folder = resolve_folder(name_or_path, [SFT_FILE, CONFIG_FILE], revision=revision, cache_dir=cache_dir,
                            local_files_only=local_files_only, token=token)
    if not (folder / SFT_FILE).is_file():
        raise SparseDiffFormatError(f"{name_or_path}: no {SFT_FILE} in it; it is {describe_folder(folder)}")
    diff = cls.load(folder / SFT_FILE)
    config_path = folder / CONFIG_FILE
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SparseDiffFormatError(f"{config_path}: not valid JSON ({err})") from err
        check_config(config, diff, str(name_or_path))
    return diff


def push_to_hub(
    diff: SparseDiff,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str = "Upload sparse fine-tuning (deftx)",
    revision: str | None = None,
) -> str:
    """Create (if needed) the Hub model repository ``repo_id`` and upload the SFT folder to it.

    Returns:
        The URL of the commit.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="deftx-push-") as folder:
        save_pretrained(diff, folder, repo_id=repo_id)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                   revision=revision, repo_type="model")
    return str(getattr(commit, "commit_url", commit))
