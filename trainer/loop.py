"""The training loop every method shares; it knows methods only through trainer/methods' contract.

One optimizer step = `accum` micro-batches. Each micro-batch: (DDP: gather node ids) -> in-batch graph by CSR
lookup -> encoders (DDP: gather embeddings, so the method's parts and losses see the global batch) -> the method's
parts (SLIP: GAT refinement) -> the method's named loss terms -> weighted sum -> backward (DDP's gradient sync only
on the last micro-batch).

With `accum_freq` K instead (open_clip's --accum-freq, GradCache's scheme): the K micro-batches are encoded without
gradients and their encoder outputs cached; the batch graph, the method's parts and the loss run once over the
whole K x B (x ranks) batch on the cache, whose backward gives the method's parameters and the logit scale their
full-batch gradient and the cache its gradient; then each micro-batch is re-encoded with gradients, replaying the
RNG state of its first encoding (same dropout masks; the batch tensors, so the augmentation, are fixed), and its
slice of the cache gradient is pushed through the encoders. Every parameter then holds the gradient of one K x B
batch: the method's parameters get it once, not K times (open_clip's loop sums the K losses, which gives the logit
scale K times its gradient). Under DDP this path runs the model outside DDP's wrapper and all-reduces the gradients
once per step.

A non-finite loss (or, without fp16's loss scaling, a non-finite gradient norm) stops the run before the optimizer
step that would spread it into the weights: `NonFiniteTraining` names the step and the terms, no checkpoint is
written after it, and summary.json says the run failed (the CLI exits 1). The last checkpoint stays the last good
state.
"""
from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from slipio.progress import progress_bar
from trainer.batch_graph import CSRGraph, batch_graph_stats
from trainer.checkpoint import (
    CheckpointError,
    capture_rng_state,
    export_alignment,
    export_open_clip,
    list_checkpoints,
    load_checkpoint,
    load_newest,
    reconcile_best,
    resolve_checkpoint,
    restore_rng_state,
    save_best,
    save_checkpoint,
    set_aside,
)
from trainer.config import TrainConfig, TrainSetupError
from trainer.data import StreamSpec, TrainBatches, resolve_shards
from trainer.distributed import (
    all_gather_ids,
    all_gather_with_grad,
    average_gradients,
    broadcast_state,
    init_distributed,
    mean_over_ranks,
)
from trainer.losses import weighted_sum
from trainer.methods import BatchContext, get_method
from trainer.model import (
    ContrastiveModel,
    build_model,
    image_transforms,
    resolve_model_name,
    tokenizer_for,
)
from trainer.optim import build_optimizer, lr_at, set_lr
from trainer.release import Release
from trainer.reporting import RunLogger, check_report_to
from trainer.run_io import (
    LOG_FILE,
    SUMMARY_FILE,
    atomic_write_json,
    truncate_log,
    write_bank_run_config,
    write_run_config,
)

log = logging.getLogger("slip-train")


class NonFiniteTraining(RuntimeError):
    """The loss or the gradient norm became inf/nan: training stopped before the optimizer step (exit 1)."""


# ---- setup helpers ----------------------------------------------------------------------------------------------
def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainSetupError(f"--device {name}: CUDA is not available")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def seed_everything(seed: int) -> None:
    """Same seed on every rank: the GATs run on the gathered global batch, so their dropout masks must agree."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- the loop ---------------------------------------------------------------------------------------------------
class Trainer:
    """Holds the run's state; `run()` trains to cfg.steps and returns the summary."""

    def __init__(self, cfg: TrainConfig):
        self.t_start = time.perf_counter()
        self.cfg = cfg
        self.rank, self.world, local_rank = init_distributed(cfg.dist_timeout, cfg.device)
        self.is_main = self.rank == 0
        self.device = resolve_device(cfg.device, local_rank)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.run_dir = Path(cfg.out)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed)

        # validate inputs before building anything heavy
        check_report_to(cfg.report_to)
        self.bank = None  # a bank-trained method (SAIL): stored features instead of towers and shards
        if get_method(cfg.method).trains_on_bank:
            from trainer.bank import load_bank
            self.bank = load_bank(cfg.bank_path(), Release(cfg.release))  # refused here when it does not fit
        self.model_name = resolve_model_name(cfg.model) if self.bank is None else None
        shards = resolve_shards(cfg.release, cfg.shards, cfg.split) if self.bank is None else None
        graph_path = cfg.graph_path()
        needs_graph = get_method(cfg.method).needs_graph
        if needs_graph and cfg.release is not None and cfg.graph is None:
            graph_path = Release(cfg.release).graph_file(cfg.method)
        self.graph: Optional[CSRGraph] = None
        if graph_path is not None and (needs_graph or graph_path.is_file()):
            self.graph = CSRGraph.from_parquet(graph_path, kinds=cfg.edge_kinds, max_neighbors=cfg.max_neighbors)
        resumed = self._load_resume()  # a damaged checkpoint is bad input too: found before the model is built
        resume_path, state = resumed if resumed is not None else (None, {})

        if self.bank is None:
            self.model: ContrastiveModel = build_model(cfg, self.device)
        else:
            from trainer.bank_model import BankModel
            self.model = BankModel(cfg, self.bank.image_dim, self.bank.text_dim).to(self.device)
        self.method = self.model.method
        self.optimizer = build_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.step, self.samples_seen, consumed = 0, 0, 0
        self.resumed_from: Optional[str] = None
        rng_state = None
        if resume_path is None and list_checkpoints(self.run_dir):
            raise TrainSetupError(f"{self.run_dir} already holds checkpoints: pass --resume latest to continue "
                                  "that run, or choose another --out")
        if resume_path is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.step, self.samples_seen = int(state["step"]), int(state["samples_seen"])
            consumed = int(state["data"]["consumed_batches"])
            rng_state = state["rng"]
            self.resumed_from = str(resume_path)
        if self.bank is None:
            train_tf, val_tf = image_transforms(self.model)
            self.data = TrainBatches(StreamSpec(
                shards=shards, batch_size=cfg.batch_size, transform=train_tf if cfg.augment else val_tf,
                tokenizer=tokenizer_for(self.model_name), seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer,
                shard_shuffle=cfg.shard_shuffle, augment=cfg.augment, rank=self.rank, world_size=self.world,
                num_workers=max(cfg.workers, 1), consumed_batches=consumed),
                workers=cfg.workers, pin_memory=self.device.type == "cuda")
        else:
            from trainer.bank_data import BankBatches, train_rows
            self.data = BankBatches(self.bank, train_rows(self.bank, Release(cfg.release), cfg.split),
                                    cfg.batch_size, cfg.seed, self.rank, self.world, consumed, self.device)
        if resume_path is not None:
            self._check_resumable(state)
        self.validator = None  # --val-every: built now, so a val split that cannot be read fails before training
        if cfg.val_every is not None:
            from trainer.validation import Validator
            self.validator = Validator(cfg, val_tf, tokenizer_for(self.model_name), self.device)
        from trainer.validation import BestSoFar
        self.best = BestSoFar.from_state(cfg.best_metric, state.get("best"))
        if self.is_main:
            if self.bank is not None:
                write_bank_run_config(self.run_dir, cfg, self.bank)
            else:
                write_run_config(self.run_dir, cfg, self.model_name, self.model)
            if self.resumed_from is not None:
                truncate_log(self.run_dir, self.step)
            elif (self.run_dir / LOG_FILE).exists():
                (self.run_dir / LOG_FILE).unlink()  # a fresh run in a folder without checkpoints: fresh log
            reconcile_best(self.run_dir, self.best.state())  # a best.pt from a lost future (or a fresh run): gone
        self.batches = iter(self.data)
        if rng_state is not None:
            restore_rng_state(rng_state)  # after the loader started, exactly where the first run saved it

        forward_module: torch.nn.Module = self.model
        self.ddp: Optional[torch.nn.parallel.DistributedDataParallel] = None
        if self.world > 1 and cfg.accum_freq == 1:
            forward_module = self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        elif self.world > 1:
            broadcast_state(self.model)  # what DDP's wrapper would do: rank 0's weights everywhere
        self.forward: Callable = torch.compile(forward_module) if cfg.compile else forward_module
        self.encode: Callable = torch.compile(self.model.encode) if cfg.compile else self.model.encode
        self.micro_batches = cfg.accum * cfg.accum_freq  # one of the two is 1
        self.logger = RunLogger(self.run_dir, self.is_main, purge_step=self.step + 1, cfg=cfg,
                                resumed=self.resumed_from is not None)
        self.setup_s = time.perf_counter() - self.t_start

    def _load_resume(self) -> Optional[tuple[Path, dict[str, Any]]]:
        """(path, state) of the checkpoint to continue from, None for a fresh run.

        `latest` falls back past unreadable newer checkpoints (a torn copy, a full disk), says which one it took,
        and sets the unreadable ones aside; an explicit checkpoint that does not load is a CheckpointError."""
        resume = self.cfg.resume
        if resume is None:
            return None
        if resume == "latest":
            try:
                path, state, skipped = load_newest(self.run_dir, map_location=self.device)
            except FileNotFoundError:
                log.info("--resume latest: no checkpoint in %s yet, starting fresh", self.run_dir)
                return None
            except CheckpointError as exc:
                raise CheckpointError(f"--resume latest: {exc}") from None
            for bad, problem in skipped:
                kept = set_aside(bad) if self.is_main else bad
                log.warning("--resume latest: skipping %s (kept as %s)", problem, kept.name)
            if skipped:
                log.warning("--resume latest: resuming from %s (step %d), the newest checkpoint that loads",
                            path, int(state["step"]))
            return path, state
        try:
            path = resolve_checkpoint(self.run_dir, resume)
            return path, load_checkpoint(path, map_location=self.device)
        except (FileNotFoundError, CheckpointError) as exc:
            raise CheckpointError(f"--resume: {exc}") from None

    def _check_resumable(self, state: dict[str, Any]) -> None:
        """The data position only means something with the same batch size, (effective) worker count and world
        size: every rank resumes its own stream (rank r's shards, seeds and consumed batches)."""
        saved = state["data"]
        if saved.get("world_size", 1) != self.world:
            raise TrainSetupError(
                f"resume needs the checkpoint's world size: it was trained by {saved.get('world_size', 1)} "
                f"process(es), this run has {self.world}; each rank resumes its own data stream, so launch "
                f"`torchrun --nproc_per_node {saved.get('world_size', 1)} slip-train ...` (or start a new --out)")
        workers = self.data.position()["num_workers"]
        if saved["batch_size"] != self.cfg.batch_size or saved["num_workers"] != workers:
            raise TrainSetupError(
                f"resume needs the checkpoint's data layout: batch size {saved['batch_size']}, "
                f"{saved['num_workers']} loader worker(s); this run has {self.cfg.batch_size}, "
                f"{workers} (set --batch-size/--workers accordingly)")
        if saved.get("bank_rows") != self.data.position().get("bank_rows"):
            raise TrainSetupError(f"resume needs the checkpoint's bank rows: {saved.get('bank_rows')} trained on, "
                                  f"{self.data.position().get('bank_rows')} now (another --bank or --split?)")
        if state["config"]["method"] != self.cfg.method:
            raise TrainSetupError(f"checkpoint was trained with --method {state['config']['method']}")

    def _autocast(self):
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(self.device.type, dtype=dtype)
        return nullcontext()

    def compute_gradients(self, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Forward + backward of one optimizer step's micro-batches (gradients synced over ranks); one record per
        loss computation (per micro-batch with --accum, one for all with --accum-freq) with the terms averaged over
        ranks and the batch-graph stats of the global batch. Raises NonFiniteTraining on every rank alike."""
        if self.cfg.accum_freq > 1:
            return [self._cached_step(batches)]
        return [self._micro_step(batch, sync=i == len(batches) - 1) for i, batch in enumerate(batches)]

    def _inputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        return (batch["images"].to(self.device, non_blocking=True),
                batch["tokens"].to(self.device, non_blocking=True), batch["node_ids"].to(self.device))

    def _tokens(self, tokens: Tensor) -> Optional[Tensor]:
        """BatchContext.tokens: the caption ids; None for a bank run (its second input is stored text features)."""
        return tokens if self.bank is None else None

    def _global(self, local_ids: Tensor) -> tuple[Tensor, Optional[Callable], Optional[slice]]:
        """(the global batch's node ids, the gather for the embeddings, this rank's loss rows with --local-loss)."""
        if self.world == 1:
            return local_ids, None, None
        rows = None
        if self.cfg.local_loss:
            rows = slice(self.rank * len(local_ids), (self.rank + 1) * len(local_ids))
        return all_gather_ids(local_ids), all_gather_with_grad, rows

    def _batch_graph(self, node_ids: Tensor) -> tuple[Optional[Tensor], Optional[Tensor], dict[str, float]]:
        if self.graph is None:  # with a graph (the method needs it, or the release has one) its stats are logged
            return None, None, {}
        edge_index, edge_weight = self.graph.batch_edge_index(node_ids)
        return edge_index, edge_weight, batch_graph_stats(node_ids, edge_index)

    def _micro_step(self, batch: dict[str, Any], sync: bool = True) -> dict[str, Any]:
        """Forward + backward of one micro-batch (--accum: negatives per micro-batch); DDP syncs only if `sync`."""
        images, tokens, local_ids = self._inputs(batch)
        node_ids, gather, rows = self._global(local_ids)
        edge_index, edge_weight, stats = self._batch_graph(node_ids)
        with self.ddp.no_sync() if self.ddp is not None and not sync else nullcontext():
            with self._autocast():
                out = self.forward(images, tokens, edge_index, edge_weight, gather)
            terms = self.method.loss_terms(self.model, out,
                                           BatchContext(node_ids, edge_index, edge_weight, self._tokens(tokens), rows))
            loss = weighted_sum(terms, self.method.term_weights(self.step))
            self.scaler.scale(loss / self.cfg.accum).backward()
        return {**self._checked(loss, terms), "node_ids": batch["node_ids"], **stats}

    def _cached_step(self, batches: list[dict[str, Any]]) -> dict[str, Any]:
        """--accum-freq: the loss over all micro-batches from cached encoder outputs, then each micro-batch
        re-encoded with gradients (module docstring)."""
        inputs = [self._inputs(batch) for batch in batches]
        rng_states, cached = [], []
        with torch.no_grad():
            for images, tokens, _ in inputs:
                rng_states.append(_rng_state(self.device))
                with self._autocast():
                    cached.append(self.encode(images, tokens))
        # this rank's encoder outputs of all K micro-batches, in order: leaves whose .grad is the cache gradient
        leaves = {key: torch.cat([c[key] for c in cached]).detach().requires_grad_(torch.is_floating_point(v))
                  for key, v in cached[0].items()}
        tokens = torch.cat([t for _, t, _ in inputs])
        local_ids = torch.cat([ids for _, _, ids in inputs])
        node_ids, gather, rows = self._global(local_ids)
        edge_index, edge_weight, stats = self._batch_graph(node_ids)
        with self._autocast():
            out = self.model.head(leaves, edge_index, edge_weight, gather)
        terms = self.method.loss_terms(self.model, out,
                                       BatchContext(node_ids, edge_index, edge_weight, self._tokens(tokens), rows))
        loss = weighted_sum(terms, self.method.term_weights(self.step))
        record = self._checked(loss, terms)  # before the K re-encodings: a non-finite step stops here
        self.scaler.scale(loss).backward()
        offset = 0
        for (images, micro_tokens, _), state in zip(inputs, rng_states):
            n = len(images)
            with _replayed_rng(state, self.device), self._autocast():
                fresh = self.encode(images, micro_tokens)
            pairs = [(fresh[key], leaf.grad[offset:offset + n]) for key, leaf in leaves.items()
                     if leaf.grad is not None]
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
            offset += n
        average_gradients(self.model.parameters())
        return {**record, "node_ids": local_ids.cpu(), **stats}

    def _checked(self, loss: Tensor, terms: dict[str, Tensor]) -> dict[str, Any]:
        """The loss and its terms averaged over ranks; NonFiniteTraining on every rank if any rank's is not finite
        (before the optimizer step that would spread it)."""
        names = list(terms)
        values = mean_over_ranks([loss.item()] + [terms[name].item() for name in names], self.device)
        total, by_name = values[0], dict(zip(names, values[1:]))
        if not math.isfinite(total) or not all(map(math.isfinite, by_name.values())):
            bad = ", ".join(f"{name}={value}" for name, value in by_name.items() if not math.isfinite(value))
            raise NonFiniteTraining(f"non-finite loss at step {self.step + 1}: loss={total}"
                                    + (f" ({bad})" if bad else ""))
        return {"loss": total, "terms": by_name}

    def _optimizer_step(self) -> Optional[float]:
        grad_norm = None
        if self.cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip).item()
            if not math.isfinite(grad_norm) and not self.scaler.is_enabled():  # fp16's scaler skips such steps
                raise NonFiniteTraining(f"non-finite gradient norm at step {self.step + 1}: {grad_norm} "
                                        "(the loss was finite)")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.model.clamp_scales_()
        return grad_norm

    def _state(self) -> dict[str, Any]:
        """What a checkpoint holds (module docstring of trainer/checkpoint.py), the best so far included."""
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "scheduler_step": self.step, "samples_seen": self.samples_seen,
            "rng": capture_rng_state(), "data": {**self.data.position(), "world_size": self.world},
            "config": self.cfg.model_dump(mode="json"), "best": self.best.state()}

    def _checkpoint(self) -> None:
        if self.is_main:
            save_checkpoint(self.run_dir, self.step, self._state(), keep_last=self.cfg.keep_last)

    def _validate(self) -> Optional[dict[str, float]]:
        """--val-every at this step: rank 0 scores (trainer/validation.py) while the other ranks wait at a
        barrier; a new best (by --best-metric) is written as checkpoints/best.pt. The val_* values (rank 0) or
        None."""
        cfg = self.cfg
        if self.validator is None or not (self.step % cfg.val_every == 0 or self.step == cfg.steps):
            return None
        values = self.validator.score(self.model, self.step) if self.is_main else None
        if self.world > 1:
            dist.barrier()
        if values is not None and self.best.improves(values.get(f"val_{cfg.best_metric}")):
            self.best.update(values[f"val_{cfg.best_metric}"], self.step)
            save_best(self.run_dir, self.step, self._state())
        return values

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        first_step = self.step
        bar = progress_bar(total=cfg.steps, initial=self.step, disable=not self.is_main, unit="step",
                           desc=f"slip-train[{cfg.method}]", dynamic_ncols=True)  # no terminal: a line every ~10 s
        self.model.train()
        t_train = time.perf_counter()
        self.last_record: dict[str, Any] = {}
        try:
            self._train_steps(bar)
        except NonFiniteTraining as exc:
            bar.close()
            failed = f"{exc}; stopped before that step's weight update; {self._last_checkpoint_note()}; lower " \
                     "--lr, or check the config and the data"
            if self.is_main:
                atomic_write_json(self.run_dir / SUMMARY_FILE, {
                    **self._summary(first_step, t_train, self.last_record), "status": "failed", "error": failed})
            self.logger.close()
            raise NonFiniteTraining(failed) from None
        bar.close()
        summary = {**self._summary(first_step, t_train, self.last_record), "status": "done"}
        if self.is_main:
            if self.bank is None:
                export_open_clip(self.model.clip, self.run_dir)
            else:  # SAIL: no towers, nothing for open_clip; the alignment layers are the run's product
                export_alignment(self.model, self.run_dir)
            atomic_write_json(self.run_dir / SUMMARY_FILE, summary)
        self.logger.close()
        return summary

    def _last_checkpoint_note(self) -> str:
        found = list_checkpoints(self.run_dir)
        if not found:
            return "no checkpoint was written yet"
        return f"the last good checkpoint is {found[-1][1]} (step {found[-1][0]})"

    def _train_steps(self, bar: Any) -> None:
        """Steps until cfg.steps: log, checkpoint; `self.last_record` is the last logged step's record."""
        cfg = self.cfg
        val_postfix: dict[str, str] = {}
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            lr = lr_at(self.step, cfg)
            set_lr(self.optimizer, lr)
            self.optimizer.zero_grad(set_to_none=True)
            t_data = time.perf_counter()
            batches = [next(self.batches) for _ in range(self.micro_batches)]
            data_time = time.perf_counter() - t_data
            parts = self.compute_gradients(batches)
            grad_norm = self._optimizer_step()
            self.step += 1
            step_samples = cfg.batch_size * self.micro_batches * self.world
            self.samples_seen += step_samples
            batch_time = time.perf_counter() - t0
            val = self._validate()  # after batch_time: a val pass is not a training step's time
            if val is not None:
                val_postfix = {f"val_{cfg.best_metric}": f"{val.get(f'val_{cfg.best_metric}', math.nan):.4f}"}
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                record = {**self._record(parts, lr, grad_norm, step_samples, data_time, batch_time), **(val or {})}
                self.logger.write(record)
                self.last_record = record
                bar.set_postfix({**{k: f"{v:.4f}" for k, v in record.items() if _is_loss_key(k) and v is not None},
                                 **val_postfix})
            elif val is not None:  # a val step that is not a log step: a line of its own
                self.logger.write({"step": self.step, "samples": self.samples_seen, **val})
            bar.update(1)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                self._checkpoint()

    def _summary(self, first_step: int, t_train: float, record: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        train_s = time.perf_counter() - t_train
        trained = (self.step - first_step) * cfg.batch_size * self.micro_batches * self.world
        return {
            "method": cfg.method, "model": cfg.model if self.bank is None else f"bank:{cfg.bank}",
            "seed": cfg.seed, "steps": self.step, "samples": self.samples_seen,
            "samples_this_process": trained, "train_time_s": train_s, "setup_time_s": self.setup_s,
            "wall_time_s": time.perf_counter() - self.t_start,
            "samples_per_s": trained / train_s if train_s > 0 else None,
            "skipped": self.data.skipped(), "skipped_total": sum(self.data.skipped().values()),
            "final": {k: v for k, v in record.items() if _is_loss_key(k)},
            "device": str(self.device), "precision": self.precision, "world_size": self.world,
            "workers": self.data.workers, "resumed_from": self.resumed_from,
            **({"best": self.best.state()} if self.validator is not None else {})}

    def _record(self, parts: list[dict[str, Any]], lr: float, grad_norm: Optional[float], step_samples: int,
                data_time: float, batch_time: float) -> dict[str, Any]:
        def mean(key: str) -> Optional[float]:
            return _mean([p[key] for p in parts if p.get(key) is not None])

        term_names = list(dict.fromkeys(name for p in parts for name in p["terms"]))
        terms = {f"loss_{name}": _mean([p["terms"][name] for p in parts if name in p["terms"]])
                 for name in term_names}
        skipped = self.data.skipped()
        return {
            "step": self.step, "samples": self.samples_seen, "loss": mean("loss"), **terms, "lr": lr,
            "grad_norm": grad_norm, **self.model.log_scalars(),
            "samples_per_s": step_samples / batch_time, "data_time": data_time, "batch_time": batch_time,
            "neighbor_frac": mean("neighbor_frac"), "edges_per_sample": mean("edges_per_sample"),
            "duplicate_frac": mean("duplicate_frac"), "skipped": skipped, "skipped_total": sum(skipped.values()),
            "data_digest": data_digest([p["node_ids"] for p in parts])}


def _rng_state(device: torch.device) -> tuple[Tensor, Optional[Tensor]]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextmanager
def _replayed_rng(state: tuple[Tensor, Optional[Tensor]], device: torch.device):
    """Run the block from a saved RNG state, then continue the RNG where it was (the re-encoding of --accum-freq
    draws the same dropout masks as the cached encoding and consumes nothing)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def _is_loss_key(key: str) -> bool:
    """`loss` (the total) and `loss_<term>` (each of the method's terms, unweighted)."""
    return key == "loss" or key.startswith("loss_")


def _mean(values: list[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def data_digest(node_ids: list[Tensor]) -> str:
    """Short hash of the step's node ids: makes 'same data order' (slip vs clip, resumed vs not) checkable in logs."""
    digest = hashlib.blake2b(digest_size=8)
    for ids in node_ids:
        digest.update(ids.cpu().numpy().astype("<i8").tobytes())
    return digest.hexdigest()


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train `cfg` to completion; returns the summary also written to RUN/summary.json."""
    if cfg.warmup >= cfg.steps:
        log.warning("warmup (%d steps) >= steps (%d): the LR never reaches its peak and never decays; "
                    "pass e.g. --warmup %d for a run this short", cfg.warmup, cfg.steps, max(1, cfg.steps // 10))
    try:
        return Trainer(cfg).run()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
