"""Suite training: the engine's steps (``qscale.train.engine``) plus the checkpoint suite and resume.

Deterministic on CPU: data batches are a pure function of ``(seed, step)``, the LR a pure function of
the step, and the resume state (weights, AdamW moments, RNG) is restored exactly, so a killed and
re-run training ends with the same weights, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.markup import escape
from safetensors.torch import load_model as load_safetensors
from safetensors.torch import save_model as save_safetensors
from transformers.utils import logging as hf_logging

from qscale.data.batches import eval_windows, train_batch
from qscale.data.tokenizer import tokenizer_side_files
from qscale.errors import QscaleError, require
from qscale.evaluate.loss import evaluate
from qscale.models import build_model, count_params, load_model
from qscale.models.load import model_positions
from qscale.provenance import config_hash, to_jsonable, versions
from qscale.train.checkpoint import (
    META,
    CheckpointInfo,
    atomic_folder,
    checkpoint_dir,
    list_checkpoints,
    load_state_file,
    read_checkpoint,
)
from qscale.train.config import TrainConfig
from qscale.train.distributed import barrier, setup
from qscale.train.engine import autocast, device_for, make_optimizer, train_steps
from qscale.train.fingerprint import check_parent_tokenizer, check_resume, parent_checkpoint, run_fingerprints

STATE_EVERY = 200  # also save resume state every this many steps between checkpoints


def _init_model(cfg: TrainConfig, vocab_size: int):
    if cfg.model is None:
        return build_model(cfg.size, vocab_size, max_seq_len=max(1024, cfg.seq_len), seed=cfg.seed)
    model = load_model(cfg.model)
    n_emb = model.get_input_embeddings().num_embeddings
    require(
        n_emb >= vocab_size, f"model {cfg.model} has {n_emb} token embeddings but the tokenizer has {vocab_size} tokens"
    )
    positions = model_positions(model)
    require(
        positions is None or positions >= cfg.seq_len,
        f"model {cfg.model} supports {positions} positions, fewer than --seq-len {cfg.seq_len}",
    )
    return model


def _run_meta(cfg: TrainConfig, streams) -> dict:
    return {
        "config": to_jsonable(cfg),
        "config_hash": config_hash(cfg),
        "tokenizer_hash": streams.tokenizer_hash,
        "fingerprints": run_fingerprints(cfg, streams),
    }


def _fresh(cfg: TrainConfig, vocab_size: int, device: torch.device):
    """The step-0 model (seeded) and its optimizer."""
    torch.manual_seed(cfg.seed)
    model = _init_model(cfg, vocab_size).to(device)
    return model, make_optimizer(model, cfg.optim)


def _save_state(out_dir: Path, model, opt, step: int, recent: list[float]) -> None:
    def write(tmp: Path) -> None:
        save_safetensors(model, str(tmp / "model.safetensors"))
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        torch.save(
            {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            tmp / "rng.pt",
        )
        (tmp / "trainer.json").write_text(json.dumps({"step": step, "recent_losses": recent}))

    atomic_folder(out_dir / "state", write)


def _load_state(out_dir: Path, model, opt) -> tuple[int, list[float]]:
    """Restore the resume state; falls back to the previous one if a kill hit between the two renames."""
    folder = next((f for f in (out_dir / "state", out_dir / ".state.old") if (f / "trainer.json").is_file()), None)
    if folder is None:
        return 0, []
    try:
        load_safetensors(model, str(folder / "model.safetensors"))
        opt.load_state_dict(load_state_file(folder / "optimizer.pt"))  # data only: a crafted pickle is refused
        rng = load_state_file(folder / "rng.pt")
        trainer = json.loads((folder / "trainer.json").read_text())
    except Exception as e:
        raise QscaleError(
            f"cannot resume from {folder}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    return int(trainer["step"]), [float(x) for x in trainer["recent_losses"]]


def _save_checkpoint(out_dir: Path, model, streams, cfg: TrainConfig, step: int, extra: dict) -> None:
    counts = count_params(model)
    meta = {
        "N": counts.non_embedding,
        "total_params": counts.total,
        "tokens": step * cfg.tokens_per_step,
        "step": step,
        "size": cfg.size if cfg.model is None else str(cfg.model),
        "config": to_jsonable(cfg),
        "tokenizer_hash": streams.tokenizer_hash,
        "vocab_size": streams.vocab_size,
        "seed": cfg.seed,
        "versions": versions(),
        **extra,
    }
    side = [] if cfg.model is None else tokenizer_side_files(cfg.model, streams.tokenizer)  # BOS/EOS for AutoTokenizer

    def write(tmp: Path) -> None:
        hf_logging.disable_progress_bar()  # transformers' per-shard bar would interleave with ours
        model.save_pretrained(tmp)
        streams.tokenizer.save(str(tmp / "tokenizer.json"))
        for f in side:
            shutil.copyfile(f, tmp / f.name)
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    atomic_folder(checkpoint_dir(out_dir, step), write)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not enabled,
        transient=False,
    )


def train(
    cfg: TrainConfig, streams, out_dir: str | Path, progress: bool = True, stop_after_steps: int | None = None
) -> list[CheckpointInfo]:
    """Train per ``cfg`` on ``streams``, writing checkpoints to ``out_dir``; resume from its state if any.

    ``stop_after_steps`` ends the process-local run after that global step without saving anything
    extra, i.e. it simulates a kill (used by tests of resume). Under ``torchrun`` the batch is split over the
    processes (DDP, :mod:`qscale.train.distributed`) and rank 0 alone evaluates and writes.
    """
    out_dir = Path(out_dir)
    info, device = setup(device_for(cfg.device))
    parent = parent_checkpoint(cfg.model)  # continuing a qscale checkpoint: D counts its tokens, no new warmup
    check_parent_tokenizer(parent, streams.tokenizer_hash)
    offset, schedule = (parent.tokens, replace(cfg.optim, warmup=0)) if parent else (0, cfg.optim)
    model, opt = _fresh(cfg, streams.vocab_size, device)
    val = eval_windows(streams.val, cfg.eval_windows, cfg.seq_len)
    run_meta = _run_meta(cfg, streams)
    if info.is_main:
        check_resume(out_dir, run_meta)  # the first write, after every check
    barrier(info)
    start, recent = _load_state(out_dir, model, opt)
    total, ckpts = cfg.total_steps, set(cfg.checkpoint_steps())
    missing = [s for s in sorted(ckpts) if s <= start and read_checkpoint(checkpoint_dir(out_dir, s)) is None]
    if missing:  # deleted after it was written: re-create it (training is deterministic) rather than skip it
        print(
            f"qscale: {len(missing)} checkpoint(s) of {out_dir} are missing (first: step {missing[0]}): "
            "re-creating them by training this run again from step 0",
            file=sys.stderr,
        )
        model, opt = _fresh(cfg, streams.vocab_size, device)
        start, recent = 0, []
    end = total if stop_after_steps is None else min(total, stop_after_steps)
    if info.enabled and info.is_main and progress:
        print(
            f"qscale: data-parallel training on {info.world} processes ({cfg.batch_size // info.world} sequences "
            "each per step); rank 0 writes",
            file=sys.stderr,
        )
    with _progress(progress and info.is_main) as bar:
        task = bar.add_task(
            escape(f"train {cfg.size if cfg.model is None else cfg.model.name}"), total=total, completed=start, info=""
        )
        t0 = time.perf_counter()

        def on_step(done: int, loss: float, lr: float) -> None:
            nonlocal recent
            recent = [*recent, loss][-20:]
            tps = (done - start) * cfg.tokens_per_step / (time.perf_counter() - t0)
            bar.update(task, completed=done, info=f"loss {loss:.3f}  {tps:,.0f} tok/s")
            if done in ckpts and info.is_main:
                with autocast(device):
                    val_loss = evaluate(model, val, batch_size=16).loss
                extra = {
                    "val_loss": val_loss,
                    "train_loss": float(np.mean(recent)),
                    "lr": lr,
                    "tokens": offset + done * cfg.tokens_per_step,
                    "start_tokens": offset,
                    "fingerprints": run_meta["fingerprints"],
                    "eval_windows": cfg.eval_windows,
                }
                _save_checkpoint(out_dir, model, streams, cfg, done, extra)
                bar.update(task, info=f"loss {loss:.3f}  val {val_loss:.3f}  {tps:,.0f} tok/s")
            if (done in ckpts or done % STATE_EVERY == 0) and info.is_main:
                _save_state(out_dir, model, opt, done, recent)
            if done in ckpts:
                barrier(info)  # the other ranks wait for the checkpoint

        train_steps(
            model,
            lambda step: train_batch(streams.train, step, cfg.batch_size, cfg.seq_len, cfg.seed),
            schedule,
            total,
            opt=opt,
            start=start,
            end=end,
            grad_accum=cfg.grad_accum,
            compile=cfg.compile,
            on_step=on_step,
            parallel=info,
        )
    return list_checkpoints(out_dir)
