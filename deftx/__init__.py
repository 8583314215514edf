"""deftx: denoised sparse fine-tuning (DeFT-X) and LT-SFT, with Triton kernels.

Pipeline, one subpackage per step: ``deftx.train`` (full fine-tuning, denoise,
select, sparse retraining) -> ``deftx.sft`` (the SparseDiff format, compose) ->
``deftx.eval`` (zero-shot evaluation). ``deftx.ops`` holds the accelerated ops
(Triton on CUDA, native C++ on CPU, PyTorch everywhere).
"""

__version__ = "0.1.0"
