"""The demo's entry point, :func:`run_demo`."""
from __future__ import annotations

import os
import time

import torch

from .._checks import check_device, check_int
from ..files import writable_dir
from .config import DemoConfig, scenario
from .image_scenario import _run

def run_demo(out: str | os.PathLike = "demo-out", *, dataset: str = "digits", data_dir=None, device: str = "cpu",
             seed: int = 0, quick: bool = False, new_width: int | None = None, progress: bool = True,
             config: DemoConfig | None = None) -> dict:
    """Run the class-extension demo, write ``out/report.json`` and ``out/lambda_tradeoff.png``; return the report.

    Args:
        out: output folder (created if needed; checked for writability before any work).
        dataset: ``"digits"`` (bundled with scikit-learn, default), ``"fashion-mnist"`` (local files,
            see :mod:`relaxedortho.data`) or ``"text"`` (shipped sentence-encoder embeddings, see
            :mod:`relaxedortho.datasets`; the report adds ``old_model``, ``new_model``, ``corpus`` and
            ``relevance``).
        data_dir: folder of the Fashion-MNIST files when not in the Debian location.
        device: ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``).
        seed: seeds the split, both models and every map; the same seed gives the same report numbers on
            the same machine and device.
        quick: reduced epochs and fewer λ / ε values (for tests).
        new_width: feature width of the new model (default: the old width). When it differs the unmapped
            new/old comparison is not defined and is reported as not applicable (``null``).
        progress: print one line per stage on stderr.
        config: a full :class:`DemoConfig` (overrides ``dataset``, ``quick`` and ``new_width``).
    """
    t_start = time.perf_counter()
    cfg = config or scenario(dataset, quick=quick, new_width=new_width)
    seed = check_int(seed, "seed", minimum=0)
    dev = check_device(device)
    out = writable_dir(out)
    threads = torch.get_num_threads()
    if dev.type == "cpu" and cfg.cpu_threads:
        torch.set_num_threads(min(threads, cfg.cpu_threads))
    try:
        return _run(out, cfg, dev, int(seed), data_dir, progress, t_start)
    finally:
        torch.set_num_threads(threads)
