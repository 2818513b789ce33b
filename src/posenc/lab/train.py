"""One lab run: train a :class:`posenc.Transformer` on a task, then evaluate it at and beyond the training length.

AdamW with linear warmup and cosine decay; the training length of each step is drawn uniformly from the task's
training range (the Delétang/Ruoss protocol). Checkpoints are written atomically, so a killed run resumes from the
last one. Under ``torchrun`` the same code runs DistributedDataParallel (gloo on CPU, NCCL on GPU): every process
draws the same global batch from the same generator and trains on its slice, with the loss normalised by the global
number of scored tokens, so N processes follow the loss curve of one.

Example::

    torchrun --nproc_per_node 2 -m posenc.lab.train --task parity_check --encoding rope --steps 100 --out run.json
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

import posenc
from posenc._checks import check_int
from posenc._io import DamagedFileError, atomic_write_bytes, checked_bytes, read_checked
from posenc.base import get_encoding
from posenc.lab.config import LOGGERS, Experiment, ModelConfig, RunConfig, TaskConfig, config_hash
from posenc.lab.tasks import IGNORE, Task, get_task
from posenc.lab.tasks.base import uniform_int
from posenc.model import Transformer, TransformerConfig
from posenc.positions import Positions

__all__ = ["DamagedCheckpointError", "Step", "atomic_write_bytes", "check_log", "evaluate", "in_distribution",
           "log_evaluation", "reads_structure", "resolve_lengths", "structure", "tensorboard_writer", "train_run",
           "train_steps"]

EVAL_SEED_OFFSET = 1_000_003  # evaluation data never shares a generator state with training data
_EVAL_COUNTS = ("examples", "tokens")  # evaluation entries that are sizes, not metrics (not sent to TensorBoard)


def resolve_lengths(task: Task, cfg: TaskConfig) -> tuple[int, int, tuple[int, ...]]:
    """``(train_min, train_max, eval_lengths)`` from the config or the task's protocol, validated."""
    lo = task.train_lengths[0] if cfg.train_min_length is None else cfg.train_min_length
    hi = task.train_lengths[1] if cfg.train_max_length is None else cfg.train_max_length
    evals = tuple(task.eval_lengths if cfg.eval_lengths is None else cfg.eval_lengths)
    for what, value in (("train_min_length", lo), ("train_max_length", hi), *(("eval length", e) for e in evals)):
        check_int(value, f"task {task.name!r}: {what}", minimum=task.min_length)
    if lo > hi:
        raise ValueError(f"task {task.name!r}: train_min_length={lo} is larger than train_max_length={hi}.")
    if not evals:
        raise ValueError(f"task {task.name!r}: no evaluation lengths; give at least one (e.g. the training length).")
    return lo, hi, evals


def reads_structure(pe: nn.Module, task: Task) -> bool:
    """Whether ``pe`` reads the structure ``task`` adds to its batches (coordinates or a graph).

    A task with ``coordinate_axes`` adds ``coordinates`` ``(B, T, A)`` to its batches; an encoding reads them when
    it declares ``"coordinates"`` in its ``reads`` and its ``axis_names`` are exactly those axes (``hierarchical`` on
    sentence/paragraph levels, ``axial_rope`` on ``(row, col)``, ``mrope`` on ``(time, height, width)``). A task with
    ``graph = True`` adds ``adjacency`` ``(B, N, N)``, read by the encodings that declare ``"adjacency"`` (the graph
    encodings). Every other encoding sees the plain positions ``0 .. T-1``: the flat baseline the structured
    encodings are compared against.
    """
    reads = getattr(pe, "reads", ())
    if task.coordinate_axes:
        return "coordinates" in reads and tuple(getattr(pe, "axis_names", ())) == tuple(task.coordinate_axes)
    return bool(task.graph) and "adjacency" in reads


def structure(model: nn.Module, task: Task, batch: dict[str, Tensor]) -> Positions | None:
    """The :class:`~posenc.Positions` carrying the batch's ``coordinates`` or ``adjacency``, if the encoding reads them.

    ``None`` (plain positions) for every other encoding.
    """
    pe = getattr(model, "module", model).pe  # DistributedDataParallel wraps the Transformer
    if not reads_structure(pe, task):
        return None
    key = "adjacency" if task.graph else "coordinates"
    if key not in batch:
        raise ValueError(f"task {task.name!r} declares structured inputs but its batch has no {key!r} entry.")
    return Positions(**{key: batch[key]})


def _forward(model: nn.Module, task: Task, batch: dict[str, Tensor]) -> Tensor:
    return _forward_plain(model, task.kind, batch, structure(model, task, batch))


def _forward_plain(model: nn.Module, kind: str, batch: dict[str, Tensor], positions: Positions | None = None) -> Tensor:
    extra = {} if positions is None else {"positions": positions}  # the structure, for an encoding that reads it
    if kind == "encoder_decoder":
        return model(batch["inputs"], batch["decoder_inputs"], padding_mask=batch.get("padding_mask"),
                     tgt_padding_mask=batch.get("decoder_padding_mask"), **extra)
    return model(batch["inputs"], padding_mask=batch.get("padding_mask"), **extra)  # (B, T, vocab)


def _slice(batch: dict[str, Tensor], rank: int, world: int, device: torch.device) -> dict[str, Tensor]:
    per = batch["inputs"].shape[0] // world
    return {k: v[rank * per:(rank + 1) * per].to(device) for k, v in batch.items()}


def schedule_factor(run: RunConfig):
    """The lab's learning-rate multiplier: linear warmup over ``run.warmup`` of the steps, cosine decay to 10%."""
    warmup = max(1, round(run.warmup * run.steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, run.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def in_distribution(metrics: dict[str, dict], metric: str, train_max: int) -> float | None:
    """Mean of ``metric`` over the evaluation lengths inside the training range (``None`` if one is undefined)."""
    values = [m.get(metric) for length, m in metrics.items() if int(length) <= train_max]
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def undefined_reason(model: Transformer, n_tokens: int, positions: Positions | None = None) -> str | None:
    """Why ``model``'s encoding cannot be run on ``n_tokens`` tokens (``None`` when it can).

    ``positions``: the structure the encoding reads (a graph decides which positions exist).
    """
    pe = model.pe if positions is None else model.pe.bind(positions)
    try:
        pe.check_length(torch.tensor([n_tokens - 1]))
    except ValueError as exc:
        return f"{exc} (not evaluated: no interpolation is applied in the lab)"
    return None


@torch.no_grad()
def evaluate(model: Transformer, task: Task, length: int, *, seed: int, batch_size: int, n_batches: int,
             device: torch.device) -> dict:
    """Metrics of ``model`` on ``task`` at ``length``: accuracy (exact match per row), token accuracy, loss, perplexity.

    Returns ``{"undefined": reason}`` when the encoding is not defined at that many tokens (e.g. ``learned`` past
    its table), instead of silently stretching it.
    """
    gen = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET + length)
    batches = [{k: v.to(device) for k, v in batch.items()}
               for batch in task.eval_batches(gen, batch_size, length, n_batches)]
    # a graph or coordinate table decides what positions exist
    reason = undefined_reason(model, task.sequence_length(length), structure(model, task, batches[0]))
    if reason is not None:
        return {"undefined": reason}
    was_training = model.training
    model.eval()
    tally = Tally()
    for batch in batches:
        tally.add(_forward(model, task, batch), batch["targets"])  # logits (B, T, vocab)
    extra = _bleu(model, task, length, seed=seed, batch_size=batch_size, n_batches=n_batches, device=device) \
        if getattr(task, "bleu", False) else {}
    model.train(was_training)
    return {**tally.metrics(), **extra}


class Tally:
    """Sums over evaluation batches: exact match per row, token accuracy and loss over the scored tokens."""

    def __init__(self) -> None:
        self.rows = self.rows_right = self.tokens = self.tokens_right = 0
        self.loss_sum = 0.0

    def add(self, logits: Tensor, targets: Tensor) -> None:
        """``logits`` ``(B, T, vocab)``, ``targets`` ``(B, T)`` with ``IGNORE`` where nothing is scored."""
        logits = logits.float()
        scored = targets != IGNORE
        self.loss_sum += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                                               reduction="sum"))
        right = (logits.argmax(-1) == targets) | ~scored
        self.rows += targets.shape[0]
        self.rows_right += int(right.all(dim=1).sum())
        self.tokens += int(scored.sum())
        self.tokens_right += int((right & scored).sum())

    def metrics(self) -> dict:
        loss = self.loss_sum / max(self.tokens, 1)
        return {"accuracy": self.rows_right / max(self.rows, 1),
                "token_accuracy": self.tokens_right / max(self.tokens, 1), "loss": loss,
                "perplexity": math.exp(min(loss, 50.0)), "examples": self.rows, "tokens": self.tokens}


def _bleu(model: Transformer, task: Task, length: int, *, seed: int, batch_size: int, n_batches: int,
          device: torch.device) -> dict:
    """Corpus BLEU (sacrebleu) and exact match of greedy translations, for encoder-decoder tasks with ``bleu``."""
    import sacrebleu

    eos = task.token("</s>")
    gen = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET + length)
    hyps, refs = [], []
    for batch in task.eval_batches(gen, batch_size, length, n_batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        steps = batch["targets"].shape[1] - 1  # the last fed token sits at position <= max_seq_len - 1
        out = model.generate(batch["decoder_inputs"][:, :1], steps, src=batch["inputs"],
                             src_padding_mask=batch["padding_mask"], eos_id=eos)[:, 1:]
        for hyp, ref in zip(out.tolist(), batch["targets"].tolist()):
            hyps.append(task.decode(hyp[:hyp.index(eos)] if eos in hyp else hyp))
            refs.append(task.decode(ref[:ref.index(eos)]))
    return {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
            "generated_exact_match": sum(h == r for h, r in zip(hyps, refs)) / max(len(refs), 1)}


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def versions() -> dict[str, str]:
    """What made a record: package versions, and ``source``, the fingerprint of posenc's own code.

    Two versions of posenc with the same version number can train differently (a changed summation order is enough
    to move a run's result as much as another seed would); a record is reproduced bit for bit by the code whose
    ``source`` it carries, with the same torch build and one thread, on the same CPU kernels (another CPU, or another
    ``ATEN_CPU_CAPABILITY``, changes the rounding: then the numbers agree to the tolerance of the README's lab
    section, not bit for bit).
    """
    return {"posenc": posenc.__version__, "source": source_fingerprint(), "torch": torch.__version__,
            "python": platform.python_version()}


@functools.cache
def source_fingerprint(root: str | None = None) -> str:
    """The first 12 hex digits of a sha256 over posenc's source files (``*.py``, and the C++ kernels' sources).

    ``root``: the package folder to fingerprint (default: the installed ``posenc``). Paths and contents both count,
    so a renamed, added or edited file changes it; compiled caches and generated data do not.
    """
    base = Path(root) if root is not None else Path(posenc.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in base.rglob("*") if p.suffix in {".py", ".cpp", ".h", ".cu"} and p.is_file()):
        relative = path.relative_to(base).as_posix()
        if "__pycache__" in relative:
            continue
        digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def encoding_options_for(experiment: Experiment, encoding: str) -> dict:
    """The options ``experiment.model.encoding_options`` gives ``encoding`` (``{}`` if none), validated."""
    all_options = experiment.model.encoding_options
    if not isinstance(all_options, dict) or not all(isinstance(v, dict) for v in all_options.values()):
        raise TypeError(f"encoding_options must map encoding names to dicts of options, such as "
                        f"{{'mrope': {{'base': 10.0}}}}; got {all_options!r}.")
    return dict(all_options.get(encoding, {}))


def check_log(log: str) -> None:
    """Raise a clear error for a ``RunConfig.log`` that is unknown, or whose package is not installed."""
    if log not in LOGGERS:
        raise ValueError(f"log must be one of {', '.join(map(repr, LOGGERS))}; got {log!r}. Use --log tensorboard to "
                         f"write TensorBoard curves, or leave it out.")
    if log == "tensorboard":
        try:
            import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        except ImportError:
            raise ImportError("--log tensorboard needs the tensorboard package: pip install 'posenc[tensorboard]' "
                              "(or leave --log out).") from None


def tensorboard_writer(root: str | os.PathLike, run_id: str, *, resumed_at: int = 0):
    """A ``SummaryWriter`` on ``root/<run_id>/`` that hides what an earlier attempt of the run logged from step
    ``resumed_at`` on (TensorBoard's ``purge_step``), so each step shows once.

    Always set, ``0`` included: a run killed before its first checkpoint restarts at step 0, and its new curve must
    replace the dead attempt's, not follow it. (``purge_step`` writes a restart marker; readers built on TensorBoard's
    event loader drop the earlier file's events at and after that step.)
    """
    check_log("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(Path(root) / run_id), purge_step=resumed_at)


def log_evaluation(writer, metrics: dict[str, dict]) -> None:
    """Evaluation metrics as ``eval/<metric>`` scalars whose step is the evaluation length (the length curve)."""
    for length, values in metrics.items():
        for name, value in values.items():
            if name != "undefined" and name not in _EVAL_COUNTS:
                writer.add_scalar(f"eval/{name}", value, int(length))


def build_model(experiment: Experiment, task: Task, encoding: str, max_seq_len: int) -> Transformer:
    m = experiment.model
    options = encoding_options_for(experiment, encoding)
    # unknown names or options fail here, clearly
    get_encoding(encoding, dim=m.dim, n_heads=m.n_heads, max_seq_len=max_seq_len, **options)
    cfg = TransformerConfig(kind=task.kind, vocab_size=task.vocab_size, dim=m.dim, n_layers=m.n_layers,
                            n_heads=m.n_heads, ffn_mult=m.ffn_mult, dropout=m.dropout, norm=m.norm,
                            max_seq_len=max_seq_len, encoding=encoding, encoding_options=options)
    return Transformer(cfg)


@dataclass(frozen=True)
class Step:
    """One optimizer step of :func:`train_steps`, as its ``on_step`` sees it."""

    step: int  # steps done, this one included
    loss: float  # the training loss reported for its batch
    lr: float  # the learning rate it used
    grad_norm: Tensor | None  # the total gradient norm before clipping (None when clipping is off)


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, sched, next_loss, *, steps: int, start: int = 0,
                grad_clip: float = 0.0, on_step=None) -> float:
    """The training loop of posenc: of a lab run (:func:`train_run`), the demo and the context-extension fine-tune.

    Puts ``model`` in training mode and runs steps ``start + 1 .. steps``. Each step calls ``next_loss()``, which
    returns the loss of the next batch (a scalar tensor to backpropagate) and a function that gives the number to
    report for it once the optimizer has stepped (a lab run under ``torchrun`` sums its loss over the processes
    there); then zeroes the gradients, backpropagates, clips the total gradient norm to ``grad_clip`` (``0``: no
    clipping), steps ``opt`` and ``sched`` (``None``: a constant learning rate) and calls ``on_step(Step(...))``.

    Returns:
        The loss reported for the last step (``nan`` when there was no step to run).
    """
    model.train()
    value = float("nan")
    for step in range(start + 1, steps + 1):
        loss, report = next_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip else None
        lr = opt.param_groups[0]["lr"]  # the rate this step uses
        opt.step()
        if sched is not None:
            sched.step()
        value = report()
        if on_step is not None:
            on_step(Step(step, value, lr, grad_norm))
    return value


def train_run(experiment: Experiment, *, encoding: str, seed: int, checkpoint: str | os.PathLike | None = None,
              progress: bool = False, on_step=None, model_out: str | os.PathLike | None = None,
              tensorboard_dir: str | os.PathLike | None = None) -> dict:
    """Train and evaluate one run; returns its record (config, seed, per-length metrics, wall time, parameters, ...).

    Args:
        experiment: task, model and run settings.
        encoding: a registered encoding name.
        seed: seeds the model initialisation and the training data.
        checkpoint: a file to resume from if it exists and to write every ``run.checkpoint_every`` steps.
        progress: show a tqdm bar with the ETA of this run.
        on_step: optional ``callback(step, loss)`` after every step (used by tests).
        model_out: where to save the trained model (:meth:`posenc.Transformer.save`), if anywhere.
        tensorboard_dir: with ``run.log == "tensorboard"``, the folder whose ``<run_id>/`` gets the event files:
            ``train/loss`` (the record's ``loss_curve``), ``train/lr`` and ``train/grad_norm`` (before clipping; only
            when ``grad_clip`` is on) every ``log_every`` steps, and ``eval/<metric>`` with the evaluation length as
            its step.
    """
    start = time.perf_counter()
    run = experiment.run
    check_log(run.log)
    if run.log == "tensorboard" and tensorboard_dir is None:
        raise ValueError("run.log is 'tensorboard' but no tensorboard_dir was given to train_run; pass the folder "
                         "the event files go to (posenc lab run uses OUT/tensorboard).")
    rank, world = _dist_info()
    if run.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch.cuda.is_available() is False on this machine.")
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if run.device == "cuda" else run.device)
    if run.device == "cpu" and run.threads:
        torch.set_num_threads(run.threads)
    if run.batch_size % world:
        raise ValueError(f"batch_size={run.batch_size} must be divisible by the {world} processes of torchrun.")
    task = get_task(experiment.task.name, **experiment.task.options)
    lo, hi, evals = resolve_lengths(task, experiment.task)
    max_seq_len = task.sequence_length(hi)

    torch.manual_seed(seed)
    options = encoding_options_for(experiment, encoding)
    model = build_model(experiment, task, encoding, max_seq_len).to(device)
    trained: nn.Module = model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
    opt = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=run.weight_decay, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule_factor(run))
    gen = torch.Generator().manual_seed(seed)
    step, curve = 0, []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        step, curve = _resume(ckpt, model, opt, sched, gen)
    run_id = f"{experiment.task.name}/{encoding}/seed{seed}/{config_hash(experiment, encoding, seed)}"
    writer = tensorboard_writer(tensorboard_dir, run_id, resumed_at=step) \
        if run.log == "tensorboard" and rank == 0 else None

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=run.steps, initial=step, desc=f"{experiment.task.name}/{encoding}/s{seed}", leave=False,
                   unit="step", dynamic_ncols=True)
    length = lo  # the training length of the current step (shown on the progress bar)

    def next_loss():
        nonlocal length
        length = int(uniform_int(gen, lo, hi))
        full = task.sample_batch(gen, run.batch_size, length)
        batch = _slice(full, rank, world, device)
        scored = (full["targets"] != IGNORE).sum().item()  # global count: every process sees the same full batch
        logits = _forward(trained, task, batch).float()  # (B, T, vocab)
        loss_sum = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE,
                                   reduction="sum")

        def report() -> float:
            reported = loss_sum.detach()
            if world > 1:
                dist.all_reduce(reported)
            return float(reported) / max(scored, 1)

        # DDP averages gradients over processes, so scale by world: the mean over the global batch, as in one process
        return loss_sum * world / max(scored, 1), report

    def after(done: Step) -> None:
        step, value = done.step, done.loss
        if not math.isfinite(value):
            raise RuntimeError(f"{experiment.task.name}/{encoding}/seed {seed}: the training loss became {value} at "
                               f"step {step}; lower --lr or raise --warmup.")
        if step % run.log_every == 0 or step == run.steps:
            curve.append([step, value])
            if writer is not None:
                writer.add_scalar("train/loss", value, step)
                writer.add_scalar("train/lr", done.lr, step)
                if done.grad_norm is not None:
                    writer.add_scalar("train/grad_norm", float(done.grad_norm), step)
                writer.flush()  # on disk at once: a run that fails (a diverged loss, say) still shows its curve
        if on_step is not None:
            on_step(step, value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}", length=length, refresh=False)
        if ckpt is not None and rank == 0 and run.checkpoint_every and step % run.checkpoint_every == 0 \
                and step < run.steps:
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "step": step,
                        "curve": curve}, buf)
            atomic_write_bytes(ckpt, checked_bytes(buf.getvalue()))

    train_steps(model, opt, sched, next_loss, steps=run.steps, start=step, grad_clip=run.grad_clip, on_step=after)
    if bar is not None:
        bar.close()

    metrics = {}
    if rank == 0 and model_out is not None:
        model.save(model_out)
    if rank == 0:
        for length in evals:
            metrics[str(length)] = evaluate(model, task, length, seed=seed, batch_size=run.eval_batch_size,
                                            n_batches=run.eval_batches, device=device)
        if writer is not None:
            log_evaluation(writer, metrics)
            writer.close()
    extra = {"content_hash": task.content_hash} if hasattr(task, "content_hash") else {}
    if rank == 0:
        bar = task.bar()
        extra.update(learned_bar=bar, learned=task.learned(in_distribution(metrics, task.metric, hi)))
    return {
        "run_id": run_id,
        "config_hash": config_hash(experiment, encoding, seed),
        "task": experiment.task.name, "encoding": encoding, "seed": seed, "kind": task.kind,
        **({"encoding_options": options} if options else {}),
        "metric": task.metric, "paper": task.paper, "train_lengths": [lo, hi], "eval_lengths": list(evals),
        "max_seq_len": max_seq_len, "reads_structure": reads_structure(model.pe, task),
        "config": experiment.to_dict(), "metrics": metrics,
        "final_train_loss": curve[-1][1] if curve else None, "loss_curve": curve,
        "parameters": model.num_parameters(), "wall_time_s": time.perf_counter() - start, "world_size": world,
        "versions": versions(), **extra,
    }


class DamagedCheckpointError(DamagedFileError):
    """A run checkpoint that cannot be resumed from (a sweep moves it aside and restarts the run)."""


def _resume(ckpt: Path, model: nn.Module, opt, sched, gen: torch.Generator) -> tuple[int, list]:
    """Load a run checkpoint into the training state; ``(step, curve)``. Raises :class:`DamagedCheckpointError`."""
    hint = "delete it (or move it aside) to restart this run from step 0; posenc lab run does that by itself."
    try:
        data = read_checked(ckpt, "run checkpoint", hint)
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # RNG states stay on CPU
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])  # dropout and randomized positions draw from the global generator
        return int(state["step"]), [list(p) for p in state["curve"]]
    except DamagedFileError as exc:
        raise DamagedCheckpointError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - anything a damaged or foreign file can raise from torch.load or loading
        raise DamagedCheckpointError(f"{ckpt} is not a resumable run checkpoint ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); {hint}") from exc


# -- torchrun entry point ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m posenc.lab.train`` (or under ``torchrun``): one run, its record written as JSON by rank 0."""
    from posenc.lab.flags import add_dataclass_flags, experiment_from_args

    parser = argparse.ArgumentParser(prog="python -m posenc.lab.train", description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="a registered task")
    parser.add_argument("--encoding", required=True, help="a registered encoding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON file for the run's record")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file to resume from / write")
    add_dataclass_flags(parser)
    args = parser.parse_args(argv)
    experiment = experiment_from_args(Experiment(TaskConfig(args.task), ModelConfig(), RunConfig()), args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if experiment.run.device == "cuda" else "gloo"
        if experiment.run.device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    try:
        record = train_run(experiment, encoding=args.encoding, seed=args.seed, checkpoint=args.checkpoint,
                           tensorboard_dir=Path(args.out).parent / "tensorboard")
        if _dist_info()[0] == 0:
            atomic_write_bytes(Path(args.out), json.dumps(record, indent=1).encode())
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
