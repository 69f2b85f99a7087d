"""The training loop shared by every head: AdamW, cosine schedule, validation each epoch,
early stopping, tqdm progress and resumable checkpoints.

``out/`` receives the best head so far (``model.safetensors`` + ``config.json``, loadable
by :func:`mm_core.heads.learned.load_head`), ``training_state.pt`` (everything needed by
``--resume``) and ``log.csv`` (one row per epoch). A folder that already holds a run is
continued (``resume``) or started again (``overwrite``), never silently mixed with a new one.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mm_core.errors import MMError

STATE_NAME = "training_state.pt"
LOG_NAME = "log.csv"


@dataclass
class FitConfig:
    """Optimisation settings (defaults are the CLI's)."""

    epochs: int = 30
    steps_per_epoch: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 15  #: stop after this many epochs without a better validation score
    warmup_steps: int = 20
    seed: int = 0
    resume: bool = False
    overwrite: bool = False  #: start again in a folder that holds a run (its log starts anew)
    progress: bool = True


def check_out(out, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over the one in ``out`` unless told to (one clear message).

    Raises
    ------
    MMError
        ``out`` holds a run (``training_state.pt``) and neither ``resume`` nor ``overwrite`` is set,
        or both are set.
    """
    if resume and overwrite:
        raise MMError("--resume continues the run in the output folder and --overwrite starts it again: pass one")
    if not (resume or overwrite) and (Path(out) / STATE_NAME).is_file():
        raise MMError(f"{out} already holds a training run ({STATE_NAME}): pass --resume to continue it, "
                      "--overwrite to start it again, or choose another --out folder")


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return f


def fit(head: torch.nn.Module, step_loss: Callable[[np.random.Generator], torch.Tensor],
        validate: Callable[[torch.nn.Module], float], out, cfg: FitConfig, log=print,
        extra_meta: dict | None = None) -> dict:
    """Train ``head`` and keep the best validation score's weights in ``out``.

    Parameters
    ----------
    head : LearnedHead
        The model (its ``save_pretrained`` writes the checkpoint).
    step_loss : callable
        ``step_loss(rng) -> loss`` for one random training batch.
    validate : callable
        ``validate(head) -> score``, lower is better (evaluated without gradients).
    out : path
        Output folder.
    cfg : FitConfig
    log : callable
        Receives one line per epoch.
    extra_meta : dict, optional
        Stored in the config's ``info`` (training data, command ...).

    Returns
    -------
    dict
        ``best`` score, ``best_epoch``, ``epochs_run``, ``stopped_early``.
    """
    out = Path(out)
    check_out(out, cfg.resume, cfg.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, min(cfg.warmup_steps, total // 10 + 1)))
    state = {"epoch": 0, "best": float("inf"), "best_epoch": -1, "bad": 0}
    state_path = out / STATE_NAME
    if cfg.resume and state_path.is_file():
        ck = torch.load(state_path, map_location="cpu", weights_only=False)
        head.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        state = ck["state"]
        rng.bit_generator.state = ck["numpy_rng"]
        torch.set_rng_state(ck["torch_rng"])
        log(f"resumed from {state_path} at epoch {state['epoch']} (best {state['best']:.4g})")
    elif cfg.resume:
        log(f"nothing to resume in {out} (no {STATE_NAME}): starting at epoch 1")
    else:
        state_path.unlink(missing_ok=True)  # --overwrite: a run stopped early must not resume the old one
    _keep_log_rows(out / LOG_NAME, state["epoch"])
    head.config["info"].update(extra_meta or {})
    head.config["info"]["fit"] = asdict(cfg)
    stopped = False
    for epoch in range(state["epoch"], cfg.epochs):
        t0 = time.perf_counter()
        head.train()
        losses = []
        bar = tqdm(range(cfg.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not cfg.progress)
        for _ in bar:
            loss = step_loss(rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        head.eval()
        with torch.no_grad():
            score = float(validate(head))
        improved = score < state["best"]
        state.update(epoch=epoch + 1)
        if improved:
            state.update(best=score, best_epoch=epoch + 1, bad=0)
            head.config["info"].update(best_val=score, best_epoch=epoch + 1)
            head.save_pretrained(out)
        else:
            state["bad"] += 1
        _append_log(out / LOG_NAME, epoch + 1, float(np.mean(losses)), score, sched.get_last_lr()[0],
                    time.perf_counter() - t0)
        log(f"epoch {epoch + 1}: train loss {np.mean(losses):.4f}, validation {score:.4f}"
            f"{' (best, saved)' if improved else ''}")
        torch.save({"model": head.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "state": state, "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()},
                   state_path)
        if state["bad"] >= cfg.patience:
            log(f"early stop: no improvement for {cfg.patience} epochs")
            stopped = True
            break
    return {"best": state["best"], "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
            "stopped_early": stopped}


def _keep_log_rows(path: Path, epochs: int) -> None:
    """Keep the rows of ``log.csv`` for epochs ``1..epochs`` (the ones the training state holds)."""
    if epochs == 0:
        path.unlink(missing_ok=True)
        return
    if not path.is_file():
        return
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= epochs]
    if len(kept) != len(rows):
        with path.open("w", newline="") as fh:
            csv.writer(fh).writerows(kept)


def _append_log(path: Path, epoch: int, train: float, val: float, lr: float, seconds: float) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(["epoch", "train_loss", "val_score", "lr", "seconds"])
        w.writerow([epoch, f"{train:.6g}", f"{val:.6g}", f"{lr:.6g}", f"{seconds:.2f}"])
