"""How deftx loads a pretrained body: the same modules on every transformers release.

transformers >= 5.2x (with its required ``kernels`` package) *kernelizes* every model that
``from_pretrained`` loads unless told otherwise: layers marked for Hub kernels (GELU, SiLU, ...)
may have their forward replaced by a kernel fetched from the Hub, where one exists for the
device. Earlier releases (e.g. 5.17, the GPU machine's) load the plain torch modules. deftx's
accelerated ops are its own, and a run must compute the same thing on either release and with
or without a Hub cache, so every load asks for the plain modules.
"""

from __future__ import annotations

from typing import Any

PLAIN_MODULES: dict[str, Any] = {"use_kernels": False}
"""Keyword arguments of every ``from_pretrained`` of a model in deftx (accepted by transformers 5.17 on)."""
