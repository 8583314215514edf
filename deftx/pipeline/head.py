"""The MLM head every language SFT trains under: its warm-up text, its identity, its report.

A warm-up is called with one :class:`HeadCall`, built once from the workspace: what the
ablation memoises heads by is the digest of that very object, so no setting can reach the
warm-up without reaching its key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deftx.data import americasnlp, nusax
from deftx.pipeline.workspace import Workspace
from deftx.train.config import to_plain
from deftx.train.identity import digest
from deftx.train.language import HeadWarmUp, cached_head, warm_up_head

PER_STEP_METRICS = ("loss", "accuracy", "masked_tokens")
SHIPPED_HEADS = Path(__file__).parent / "heads"
"""MLM heads shipped with deftx (package data), found by key before a warm-up: e.g. the NusaX
ablation's reference head (3000 steps, ~40 min on 2 CPU cores), so a fresh machine need not
warm it up again. Only a head whose key matches every input (body weights, texts, settings,
device) is used."""


def language_texts(ws: Workspace, language: str) -> list[str]:
    """The NusaX MT text a language SFT of ``language`` trains on (``language_text_splits``)."""
    return nusax.load_mt_text(ws.data_dir, language, ws.config.language_text_splits)


def americasnlp_texts(ws: Workspace, language: str) -> list[str]:
    """The AmericasNLP 2021 text an AmericasNLI language SFT of ``language`` (a code, e.g. ``bzd``) trains
    on (``americasnlp_text_splits``)."""
    return americasnlp.load_text(ws.data_dir, language, ws.config.americasnlp_text_splits)


def head_texts(ws: Workspace) -> dict[str, list[str]]:
    """The MLM head's warm-up text per corpus of ``mlm_head.texts`` (never a test split).

    ``nusax``: every language column of the MT ``language_text_splits`` (so a recipe chosen
    on valid never saw valid text); ``americasnlp``: the indigenous side of every AmericasNLP
    2021 language's ``americasnlp_text_splits`` files.
    """
    corpora: dict[str, list[str]] = {}
    for corpus in ws.config.mlm_head.texts:
        if corpus == "nusax":
            corpora[corpus] = [text for language in nusax.sentiment_languages(ws.data_dir)
                               for text in language_texts(ws, language)]
        elif corpus == "americasnlp":
            corpora[corpus] = [text for code in americasnlp.FOLDERS for text in americasnlp_texts(ws, code)]
        else:
            raise ValueError(f"mlm_head.texts: unknown corpus {corpus!r}")
    return corpora


@dataclass(frozen=True)
class HeadCall:
    """The inputs of one head warm-up: the base model, the text per corpus, the settings, the device."""

    model_dir: Path
    texts: Mapping[str, list[str]]
    settings: HeadWarmUp
    device: str

    def identity(self) -> dict[str, Any]:
        """JSON-ready: every input, the texts by digest."""
        return {"step": "mlm head", "model_dir": str(self.model_dir), "device": self.device,
                "texts": {name: digest(list(group)) for name, group in self.texts.items()},
                "settings": to_plain(self.settings)}

    def key(self) -> str:
        """The digest of :meth:`identity`: equal calls, equal keys."""
        return digest(self.identity())


def head_call(ws: Workspace) -> HeadCall:
    """The head warm-up of ``ws``'s config (its text read once, here)."""
    return HeadCall(ws.model_dir, head_texts(ws), ws.config.mlm_head, ws.device)
def head_report_line(metrics: Mapping[str, Any]) -> str:
    """One line on the warm-up: cost, training and held-out masked-token accuracy."""
    def first_last(values: list[float]) -> str:
        return f"{values[0]:.3f} -> {values[-1]:.3f}" if values else "n/a"

    curve = metrics.get("heldout_curve") or []
    heldout = ", ".join(
        f"{name} {first_last([point['groups'][name]['accuracy'] for point in curve])}"
        for name in (curve[0]["groups"] if curve else {})
    )
    corpora = "+".join(metrics.get("corpora", [])) or "?"
    return (
        f"MLM head warm-up ({'cache hit' if metrics.get('cache_hit') else 'trained'}): {metrics.get('steps')} steps "
        f"on {corpora} text, {metrics.get('seconds', float('nan')):.0f} s when trained "
        f"({metrics.get('heldout_seconds') or 0:.0f} s of it held-out scoring); masked-token accuracy "
        f"on training batches {metrics.get('initial_accuracy', float('nan')):.3f} -> "
        f"{metrics.get('final_accuracy', float('nan')):.3f}; held out: {heldout or 'none (mlm_head.eval_sequences 0)'}."
        " Curves: mlm_head.json."
    )


def head_curve_table(metrics: Mapping[str, Any]) -> str:
    """The warm-up's masked-token accuracy curve as a markdown table (one row per held-out point).

    Columns: step, minutes since the start, training accuracy over the window ending at that
    step (blank at step 0), held-out accuracy per corpus. Empty without a held-out curve.
    """
    curve = metrics.get("heldout_curve") or []
    if not curve:
        return ""
    train = {point["step"]: point["accuracy"] for point in metrics.get("train_curve") or []}
    groups = list(curve[0]["groups"])
    lines = ["| step | min | training accuracy | " + " | ".join(f"held out {g}" for g in groups) + " |",
             "|---:|---:|---:|" + "---:|" * len(groups)]
    for point in curve:
        trained = f"{train[point['step']]:.3f}" if point["step"] in train else ""
        held = " | ".join(f"{point['groups'][g]['accuracy']:.3f}" for g in groups)
        lines.append(f"| {point['step']} | {point['seconds'] / 60:.1f} | {trained} | {held} |")
    return "\n".join(lines) + "\n"



def cached_head_file(ws: Workspace) -> Path | None:
    """The head file :func:`ensure_head` would load for ``ws`` (cached, or shipped with deftx), or None when it
    would warm one up; nothing is trained or written (a dry run's look-up)."""
    from deftx.models.e5 import default_cache_root

    call = head_call(ws)
    return cached_head(call.model_dir, ws.tokenizer, call.texts, call.settings, default_cache_root() / "mlm-heads",
                       device=call.device, shipped_dir=SHIPPED_HEADS)


def ensure_head(ws: Workspace, call: HeadCall | None = None) -> Path:
    """Warm up (or load from the cache) the MLM head of ``call`` (default: :func:`head_call`) used by every
    language SFT; its metrics go to ``ws.head_metrics``."""
    from deftx.models.e5 import default_cache_root

    with ws.timer("mlm head"):
        call = call or head_call(ws)
        head_file, metrics = warm_up_head(
            call.model_dir, ws.tokenizer, call.texts, call.settings, default_cache_root() / "mlm-heads",
            log=ws.log, device=call.device, shipped_dir=SHIPPED_HEADS,
        )
    ws.head_metrics = {
        "file": head_file.name, "corpora": list(call.texts),
        "sentences": {name: len(t) for name, t in call.texts.items()}, "settings": to_plain(call.settings),
        **{k: v for k, v in metrics.items() if k not in PER_STEP_METRICS and k != "cache_file"},
    }
    ws.log(head_report_line(ws.head_metrics))
    return head_file
