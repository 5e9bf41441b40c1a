"""Online training of the space-group classifier on a stream of synthetic patterns."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

# OpenMP threads that spin at barriers while another process holds the core run a training
# step 5x slower with 2 threads than with 1 on a loaded 2-core machine (3.3 s vs 0.68 s, see
# benchmarks/bench_classifier.py --mode train-step); sleeping waiters avoid that.  OpenMP
# reads this once, when torch is first imported, so it only takes effect from here if
# nothing imported torch before; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from xtec.classifier.data import SyntheticConfig, SyntheticStream, synthetic_batch  # noqa: E402
from xtec.classifier.model import (  # noqa: E402
    ModelConfig,
    ResNet1D,
    save_model,
    system_matrix,
)
from xtec.errors import InputError, ParameterError  # noqa: E402
from xtec.nn import warmup_cosine  # noqa: E402

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Optimisation settings. ``steps`` counts batches of ``batch_size`` patterns."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    workers: int = 1
    threads: int = 1
    seed: int = 0
    val_size: int = 512
    checkpoint_every: int = 200
    time_limit: float | None = None  # seconds; stop (and save) early when reached
    stop_after: int | None = None  # stop (and save) at this step; the schedule still spans `steps`

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "threads", "val_size", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ParameterError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ParameterError("workers must be 0 or more")
        if not self.lr > 0:
            raise ParameterError("lr must be positive")


def topk_metrics(
    logits: torch.Tensor, target: torch.Tensor, sys_matrix: torch.Tensor, sys_target
) -> dict:
    """Top-1 / top-5 space-group accuracy and top-1 crystal-system accuracy.

    ``logits`` (n, n_classes); ``target`` (n,) class indices; crystal-system scores are
    the summed space-group probabilities of each system (``sys_matrix`` (n_classes, 7)).
    """
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    sys_pred = (logits.softmax(1) @ sys_matrix).argmax(1)
    return {
        "top1": float((top[:, 0] == target).float().mean()),
        "top5": float((top == target[:, None]).any(1).float().mean()),
        "system_top1": float((sys_pred == sys_target).float().mean()),
    }


def _warmup_cosine(steps: int):
    """LambdaLR factor of step ``s``: a short linear warm-up (Adam's early steps
    are noisy), then a cosine decay to 0 over ``steps``; later steps stay at 0."""
    rates = warmup_cosine(steps, warmup=max(1, steps // 30), n=steps + 1)
    return lambda s: rates[min(s, steps)]


def train(
    out_dir: str | Path,
    model_config: ModelConfig,
    data_config: SyntheticConfig,
    train_config: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Train (or resume training) a classifier; checkpoints and the final model go to ``out_dir``.

    Returns the history dict (also written to ``out_dir/history.json``).
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if model_config.space_groups != data_config.space_groups:
        raise ParameterError("model and data must use the same space groups")
    torch.set_num_threads(train_config.threads)
    torch.manual_seed(train_config.seed)
    model = ResNet1D(model_config)
    opt = torch.optim.AdamW(
        model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(train_config.steps))
    step, history = 0, {"val": [], "train_loss": []}
    ckpt = out / CHECKPOINT_FILE
    if resume:
        if not ckpt.is_file():
            raise InputError(f"nothing to resume: {ckpt} does not exist")
        try:
            # weights_only: a pickle with code in it is refused, never run.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns before it raises
                state = torch.load(ckpt, weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            step = int(state["step"])
        except Exception as exc:  # noqa: BLE001 - torch raises many types on bad files
            msg = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            raise InputError(
                f"cannot resume from {ckpt}: not a checkpoint written by 'xtec classify train' "
                f"({type(exc).__name__}: {msg})"
            ) from None
        history = (
            json.loads((out / "history.json").read_text())
            if (out / "history.json").is_file()
            else history
        )
        log.info("resumed from step %d", step)

    # A fixed validation set, from its own seed so that it never overlaps training draws.
    vs = np.random.SeedSequence([train_config.seed, 2**31 - 1])
    g_seed, s_seed = vs.spawn(2)
    xv, sgv = synthetic_batch(
        data_config,
        train_config.val_size,
        data_config.generator(np.random.default_rng(g_seed)),
        data_config.simulator(np.random.default_rng(s_seed)),
    )
    index = {sg: i for i, sg in enumerate(data_config.space_groups)}
    xv, yv = torch.from_numpy(xv), torch.tensor([index[s] for s in sgv])
    smat = system_matrix(data_config.space_groups)
    sys_v = smat[yv].argmax(1)

    stream = SyntheticStream(
        data_config, train_config.batch_size, train_config.seed, stream_id=step
    )
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=train_config.workers,
        prefetch_factor=4 if train_config.workers else None,
        persistent_workers=False,
    )
    loss_fn = nn.CrossEntropyLoss()
    extra = {"data": data_config.to_dict(), "train": asdict(train_config), "command": command}

    def evaluate() -> dict:
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(xv[i : i + 256]) for i in range(0, len(xv), 256)])
        model.train()
        return topk_metrics(logits, yv, smat, sys_v)

    def checkpoint() -> None:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "step": step,
            },
            ckpt,
        )
        save_model(
            model, out, {**extra, "step": step, "patterns_seen": step * train_config.batch_size}
        )
        (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")

    t0 = time.monotonic()
    model.train()
    bar = tqdm(
        total=train_config.steps, initial=step, disable=not progress, desc="train", unit="batch"
    )
    running = None
    it = iter(loader)
    last = min(train_config.steps, train_config.stop_after or train_config.steps)
    while step < last:
        x, y = next(it)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        lv = loss.item()
        running = lv if running is None else 0.98 * running + 0.02 * lv
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}")
        timed_out = (
            train_config.time_limit is not None and time.monotonic() - t0 > train_config.time_limit
        )
        if step % train_config.checkpoint_every == 0 or step == last or timed_out:
            m = evaluate()
            history["val"].append({"step": step, "elapsed_s": round(time.monotonic() - t0, 1), **m})
            history["train_loss"].append({"step": step, "loss": running})
            log.info(
                "step %d loss %.3f val top1 %.3f top5 %.3f", step, running, m["top1"], m["top5"]
            )
            checkpoint()
        if timed_out:
            log.warning("time limit reached at step %d of %d", step, train_config.steps)
            break
    bar.close()
    del it
    return history
