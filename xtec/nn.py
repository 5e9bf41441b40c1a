"""PyTorch plumbing shared by the autoencoders and the classifier.

One import guard (torch through :func:`xtec.optional.require`, imported when a
function here is called, never at module load), seeding, the optimiser, the one
warm-up + cosine learning-rate schedule and the one model-file format.

Model files are safetensors: tensors (weights under ``weights/``, other arrays
under ``arrays/``) plus a string metadata map holding the model kind, the JSON
configuration and JSON extras.  Nothing is unpickled on load, so a model file
from elsewhere cannot run code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from xtec.errors import InputError, ParameterError
from xtec.optional import require
from xtec.runtime.signals import raise_if_stopped

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"


def require_torch():
    """Import and return torch, or raise an :class:`XtecError` saying how to get it."""
    return require(
        "torch",
        "ml",
        "this command",
        " (on machines without a GPU install the CPU wheel first: pip install torch==2.13.0)",
    )


@contextlib.contextmanager
def deterministic(seed: int, n_threads: int | None = None) -> Iterator[None]:
    """Seed torch and force deterministic kernels for the duration of the block.

    The global RNG state, the deterministic-algorithms flag and the thread count
    are restored afterwards, so training a model does not change the caller's
    torch state.  On the CPU, the same seed and thread count give bit-identical
    results.
    """
    torch = require_torch()
    previous_flag = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        if n_threads:
            torch.set_num_threads(int(n_threads))
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous_flag)
            torch.set_num_threads(previous_threads)


def adam(params, *, lr: float, weight_decay: float, decoupled: bool = False):
    """Adam (AdamW with ``decoupled``) as one fused kernel per step where torch
    has one: the per-parameter Python loop of the default implementation took
    6 ms of a 16 ms step for the small networks here."""
    torch = require_torch()
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    params = list(params)
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):  # no fused kernel for this device or build
        return cls(params, lr=lr, weight_decay=weight_decay, foreach=True)


def show_progress(progress: bool | None) -> bool:
    """Progress bars on when asked, or by default when stderr is a terminal."""
    if progress is None:
        return sys.stderr.isatty()
    return bool(progress)


# --------------------------------------------------------------------------- schedule


def warmup_cosine(
    total: int,
    *,
    lr: float = 1.0,
    warmup: int = 1,
    final: float = 0.0,
    decay_after_warmup: bool = False,
    chained: bool = False,
    n: int | None = None,
) -> list[float]:
    """Learning rate of each step: a linear warm-up and a cosine decay to ``lr * final``.

    Parameters
    ----------
    total
        Steps the cosine spans.
    warmup
        Warm-up steps: step ``s`` is scaled by ``min(1, (s + 1) / warmup)``.
    decay_after_warmup
        False: the cosine runs over all ``total`` steps and the warm-up scales
        its start, ``lr * w(s) * c(s / total)``.  True: the warm-up alone rules
        its steps and the cosine then runs over the remaining
        ``total - warmup``.
    chained
        The cosine in the recursive form in which torch's
        ``CosineAnnealingLR(T_max=total)``, stepped once per step, computes it,
        so that without a warm-up the rates are that scheduler's to the bit.
    n
        Number of rates returned (default ``total``); steps past ``total`` stay at
        the end of the cosine.

    Returns
    -------
    A list of ``n`` floats.

    Notes
    -----
    The three trainers of this package used three differently written
    schedules; each call here reproduces its old rates to the bit (see
    tests/test_nn.py), which is why the evaluation order of every product
    below is as it is.
    """
    n = total if n is None else n
    if chained:
        eta_min = lr * final
        cosine = [lr]
        for e in range(1, n):
            cosine.append(
                (1 + math.cos(math.pi * e / total))
                / (1 + math.cos(math.pi * (e - 1) / total))
                * (cosine[-1] - eta_min)
                + eta_min
            )
        return [c * min(1.0, (s + 1) / warmup) for s, c in enumerate(cosine)]
    rates = []
    for s in range(n):
        ramp = min(1.0, (s + 1) / warmup)
        if decay_after_warmup:
            phase = min(max((s - warmup) / max(1, total - warmup), 0.0), 1.0)
            angle = math.pi * phase
        else:
            angle = math.pi * min(s, total) / total
        cosine = final + (1.0 - final) * 0.5 * (1.0 + math.cos(angle))
        if decay_after_warmup:
            rates.append(lr * (ramp if s < warmup else cosine))
        else:
            rates.append(lr * (ramp * cosine))
    return rates


# --------------------------------------------------------------------------- model files


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, str], dict]:
    """Metadata and tensors of any safetensors file; one :class:`InputError` if it is none."""
    require_torch()
    safetensors = require("safetensors", "ml", "loading models")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a model file written by xtec ({exc})") from None
    return metadata, tensors


def save_model_file(
    path: str | os.PathLike,
    kind: str,
    config: dict,
    state: dict,
    arrays: dict[str, np.ndarray],
    extras: dict,
) -> Path:
    """Write weights, arrays, configuration and extras to one safetensors file."""
    torch = require_torch()
    save_file = require("safetensors.torch", "ml", "saving models").save_file
    tensors = {f"weights/{k}": v.detach().cpu().contiguous() for k, v in state.items()}
    for k, v in arrays.items():
        tensors[f"arrays/{k}"] = torch.tensor(np.array(v, copy=True))
    metadata = {
        "xtec_model": kind,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(config),
        "extras": json.dumps(extras),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed: a failed write leaves no
    # half-written file that looks like a model.
    tmp = path.with_name(f".{path.name}.partial")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        raise_if_stopped()  # a library swallowed an interrupt: keep nothing
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("saved %s model to %s", kind, path)
    return path


def load_model_file(path: str | os.PathLike, kind: str) -> tuple[dict, dict, dict, dict]:
    """Read a file written by :func:`save_model_file`.

    Returns ``(config, state, arrays, extras)``; arrays come back as NumPy.

    Raises
    ------
    InputError
        Missing file, not a safetensors file, or a model of another kind.
    """
    metadata, tensors = read_safetensors(path)
    found = metadata.get("xtec_model")
    if found != kind:
        raise InputError(f"{path}: holds a {found or 'non-xtec'} model, expected a {kind} model")
    try:
        config = json.loads(metadata["config"])
        extras = json.loads(metadata.get("extras", "{}"))
    except (KeyError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: damaged model metadata ({exc})") from None
    state = {k[len("weights/") :]: v for k, v in tensors.items() if k.startswith("weights/")}
    arrays = {k[len("arrays/") :]: v.numpy() for k, v in tensors.items() if k.startswith("arrays/")}
    return config, state, arrays, extras


def decode_latent(decoder, latent, latent_dim: int) -> np.ndarray:
    """Run ``decoder`` on latent points (n, latent_dim) -> (n, m) float NumPy.

    Shared by both autoencoders: checks the latent width, no gradients.
    """
    torch = require_torch()
    z = np.atleast_2d(np.asarray(latent, dtype=float))
    if z.shape[1] != latent_dim:
        raise ParameterError(f"latent points need {latent_dim} coordinates, got {z.shape[1]}")
    with torch.no_grad():
        y = decoder(torch.as_tensor(z, dtype=torch.float32))
    return y.numpy().astype(float)
