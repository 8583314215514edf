"""Helpers shared by the training / evaluation subcommands (no subcommand of its own)."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

USER_ERRORS = (OSError, ValueError, KeyError)
MAX_MESSAGE = 2000
DEVICE_METAVAR = "{cpu,cuda,auto}"


GIVEN = "_deftx_options_given"
"""The namespace attribute in which :class:`StoreOnce` notes the options given (dropped by :func:`parse_arguments`)."""


class StoreOnce(argparse._StoreAction):
    """argparse's ``store`` action, refusing an option given twice (``--seeds 0 --seeds 1``): argparse
    would keep the last value and drop the first without a word. Repeatable options say so (``append``)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        given = namespace.__dict__.setdefault(GIVEN, set())
        if option_string is not None and self.dest in given:
            how = f"list all its values after one {option_string}" if self.nargs in ("+", "*") else "give it once"
            raise argparse.ArgumentError(self, f"given more than once, where only the last would count: {how}")
        given.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


def refuse_repeated_options(parser: argparse.ArgumentParser) -> None:
    """Make the single-valued options ``parser`` is given from now on :class:`StoreOnce` (usage error, exit 2,
    when one is repeated); parse with :func:`parse_arguments`."""
    parser.register("action", None, StoreOnce)
    parser.register("action", "store", StoreOnce)


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` without :class:`StoreOnce`'s bookkeeping."""
    args = parser.parse_args(argv)
    vars(args).pop(GIVEN, None)
    return args


def command_line() -> str:
    """The command as typed (for the results files)."""
    return "deftx " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


def guarded(
    name: str, run: Callable[[argparse.Namespace], int], errors: tuple[type[BaseException], ...] = USER_ERRORS
) -> Callable[[argparse.Namespace], int]:
    """Turn bad input (``errors``: by default missing files, bad config values) into one clear line and
    exit code 2."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except errors as err:
            print(f"deftx {name}: error: {one_line(err)}", file=sys.stderr)
            return 2

    return wrapper


def one_line(err: BaseException) -> str:
    """The error's message on one line (a KeyError's without its quotes), at most MAX_MESSAGE characters."""
    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    message = " ".join(message.split()) or type(err).__name__
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def finite_float(text: str) -> float:
    """argparse type: a float that is neither NaN nor infinite."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def scale_above_zero(text: str, zero: str) -> float:
    """The scale s of an SFT added to θ0 in ``text``: a finite float > 0; ArgumentTypeError saying why otherwise,
    ``zero`` for s = 0 (what 0 would mean to the command), a negative s subtracting the SFT (the library's
    ``apply_diffs`` takes one; the commands, like the pipeline's ``language_scale``, do not)."""
    value = finite_float(text)
    if value <= 0:
        why = zero if value == 0 else "a negative scale subtracts the SFT"
        raise argparse.ArgumentTypeError(f"expected a scale > 0, got {text!r} ({why})")
    return value


def sft_scale(text: str) -> float:
    """argparse type of scored scales: :func:`scale_above_zero` (s = 0 is θ0 itself, a row of its own wherever
    scales are scored)."""
    return scale_above_zero(text, "scale 0 is θ0 itself, always a row")


def language_sft_scale(text: str) -> float:
    """argparse type of ``evaluate --scale``: :func:`scale_above_zero` (s = 0 composes no language SFT)."""
    return scale_above_zero(text, "scale 0 composes no language SFT: leave out --lang-sft")


def composed_sft_scale(text: str) -> float:
    """argparse type of ``compose --scale``: :func:`scale_above_zero` (s = 0 adds nothing of its SFT)."""
    return scale_above_zero(text, "scale 0 adds nothing of its SFT: leave that --sft out")


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def seed_int(text: str) -> int:
    """argparse type: an integer >= 0 (a seed, a count that may be zero)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def path_text(text: str) -> str:
    """argparse type: a file or folder name that is not empty. An empty one (``--output-dir "$UNSET"``)
    would otherwise be ignored (the config's or the default path used instead) or read as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path or name, got an empty string")
    return text


def path_argument(text: str) -> Path:
    """argparse type: :func:`path_text` as a :class:`~pathlib.Path`."""
    return Path(path_text(text))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_overwrite_output_argument(parser: argparse.ArgumentParser, option: str, files: str) -> None:
    """--overwrite: replace the ``files`` (e.g. ``"paired.md, paired.csv and paired.png"``) that ``option`` names
    where an earlier run wrote them (:func:`output_refusal`)."""
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace the {files} of an earlier run at {option} (default: refuse them, naming "
                             "them, before any work)")


def output_refusal(option: str, files: Sequence[Path], overwrite: bool) -> str | None:
    """Why a command may not write its output ``files`` (those of ``option``): some is a folder, or exists (an
    earlier run's) and ``overwrite`` is not set; None when it may write them all. Asked before any work."""
    folders = [str(path) for path in files if path.is_dir()]
    if folders:
        return f"{option}: {', '.join(folders)} is a folder, where this command writes a file"
    earlier = [str(path) for path in files if path.exists()]
    if earlier and not overwrite:
        return (f"{option}: {', '.join(earlier)} already exist{'s' if len(earlier) == 1 else ''} (an earlier run's): "
                "choose another path, or pass --overwrite to replace "
                + ("it" if len(earlier) == 1 else "them"))
    return None


def load_pipeline_config(args: argparse.Namespace):
    """The config file of ``args.config`` with the command-line overrides applied."""
    from dataclasses import replace

    from deftx.pipeline.config import check_distinct, load_config

    config = load_config(args.config)
    if getattr(args, "output_dir", None):
        config = replace(config, output_dir=args.output_dir)
    if getattr(args, "data_dir", None):
        config = replace(config, data_dir=args.data_dir)
    if getattr(args, "results_dir", None):
        config = replace(config, results_dir=args.results_dir)
    if getattr(args, "seeds", None):
        config = replace(config, seeds=check_distinct(args.seeds, "--seeds"))
    if getattr(args, "device", None):
        config = replace(config, device=device_option(args.device))
    return config


def device_option(text: str) -> str:
    """``--device``'s value, checked to be a device name (:data:`deftx.pipeline.config.DEVICES`).

    Raises:
        ValueError: another name (one line naming the choices).
    """
    from deftx.pipeline.config import DEVICES

    if text not in DEVICES:
        raise ValueError(f"--device: expected one of {list(DEVICES)}, got {text!r}")
    return text


def add_config_arguments(parser: argparse.ArgumentParser, *, overwrite: bool = True) -> None:
    """config, --output-dir, --data-dir, --device and (for commands that train) --overwrite."""
    parser.add_argument("config", type=path_text, help="pipeline config file (YAML or JSON; see configs/default.yaml)")
    parser.add_argument("--output-dir", type=path_text, help="override the config's output_dir")
    parser.add_argument("--data-dir", type=path_text,
                        help="override the config's data_dir, the data root (default: the config's data_dir, else "
                             "$DEFTX_DATA_DIR, else ../shared/data beside the working folder or the checkout)")
    parser.add_argument(
        "--device", metavar=DEVICE_METAVAR,
        help="override the config's device: every phase on cpu or cuda; auto (the config's default): cuda when "
             "available. Asking for cuda where there is none is an error before any work",
    )
    if not overwrite:
        return
    parser.add_argument(
        "--overwrite", action="store_true",
        help="retrain the steps whose folder holds results of other settings, model or data (default: refuse "
             "them, naming what changed; steps whose identity is unchanged always resume)",
    )


def add_heldout_argument(parser: argparse.ArgumentParser, unit: str) -> None:
    """--no-heldout: skip the held-out masked-LM check of each ``unit``'s (seed's, variant's) language SFTs."""
    parser.add_argument(
        "--no-heldout", action="store_true",
        help=f"do not score each {unit}'s language SFTs on the text of their language left out of their training "
             "text (NusaX MT splits not in language_text_splits; AmericasNLP 2021 splits not in "
             "americasnlp_text_splits). By default they are, when a split is left out, as deftx heldout-mlm "
             "does: heldout.csv and a results.md section",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --pooling, --num-labels, --seed: the classifier an SFT is applied to."""
    parser.add_argument(
        "--model", type=path_text, default="e5-small",
        help="base model: 'e5-small', a save_pretrained folder of any AutoModelFor... class, or a Hugging Face "
             "Hub model id (through the Hub cache; offline once cached)",
    )
    parser.add_argument(
        "--pooling", choices=("mean", "cls"),
        help="override the classifier: mean (deftx's mean-pooled BERT classifier) or cls (the model's own "
             "AutoModelForSequenceClassification head); default: what the SFT's metadata records, else the "
             "model folder's classifier, else mean; refused where it contradicts a shipped head's recorded pooling",
    )
    parser.add_argument(
        "--num-labels", type=positive_int,
        help="override the number of classifier outputs (default: the SFT's metadata, else the shipped head's "
             "shape, else 3); refused where it contradicts a shipped head's recorded labels",
    )
    add_seed_argument(parser, "seed of a new head's init where none is shipped; evaluate's rows record it when the "
                      "task SFT records no training seed of its own (default 0)")
    parser.add_argument(
        "--no-base-check", action="store_true",
        help="apply SFTs recorded for another base model than --model (by default refused before anything runs: "
             "the names must be equal, or, for a local folder, end in the same folder name)",
    )


def check_base_models(model, diffs, sources: list[str], skip: bool) -> None:
    """ValueError, before any work, when an SFT was recorded for another base model than ``model``'s
    (unless ``skip``, i.e. ``--no-base-check``); ``sources`` name the SFTs as given."""
    from deftx.sft.apply import base_model_id, same_base_model

    model_id = base_model_id(model)
    if skip or not model_id:
        return
    for source, diff in zip(sources, diffs, strict=True):
        if diff.base_model and not same_base_model(diff.base_model, model_id):
            raise ValueError(
                f"{source} was made for base model {diff.base_model!r}, --model is {model_id!r} "
                "(--no-base-check applies it anyway)"
            )


def add_seed_argument(parser: argparse.ArgumentParser, help: str = "seed (default 0)") -> None:
    """--seed: an integer >= 0, default 0."""
    parser.add_argument("--seed", type=seed_int, default=0, help=help)


def name_base_model(model, name: str) -> None:
    """Give a model loaded by Hub id that id as its base-model name (SFTs record the id, not a cache path)."""
    from deftx.pipeline.workspace import E5_NAMES

    if name not in E5_NAMES and not Path(name).expanduser().is_dir():
        model.config.deftx_base_model = name
