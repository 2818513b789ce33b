"""The central claim on real trained models: without positions, "the cat chases the dog" = "the dog chases the cat".

A tiny bidirectional encoder reads ``[CLS] the (adj) N1 (adv) V the (adj) N2 ? Nq`` and answers at ``[CLS]`` whether
``Nq`` did the action (is ``N1``). Swapping ``N1`` and ``N2`` keeps the bag of words and flips the answer, so an
encoder without position information — which is exactly permutation-equivariant — must give both sentences the
same answer and scores 50% on a test set of such mirrored pairs. With ``sinusoidal``, ``learned`` or ``rope`` the
same model reaches ~100%.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

# The generator lives in the lab (posenc.lab.tasks.who_did_what); this demo keeps its original API.
from posenc.lab.tasks.who_did_what import LENGTH, TOKEN, VOCAB, WhoDidWhat, sample_who_did_what
from posenc.lab.train import train_steps
from posenc.model import Transformer, TransformerConfig

__all__ = ["LENGTH", "TOKEN", "VOCAB", "WhoDidWhat", "answer_logits", "evaluate_who_did_what", "run_demo",
           "sample_who_did_what", "train_who_did_what"]


def answer_logits(model: Transformer, batch: WhoDidWhat) -> torch.Tensor:
    """``(B, 2)`` logits for (no, yes), read at the ``[CLS]`` position."""
    logits = model(batch.tokens, padding_mask=batch.padding_mask)[:, 0]  # (B, vocab)
    return logits[:, [TOKEN["no"], TOKEN["yes"]]]


def train_who_did_what(encoding: str, *, steps: int = 300, batch_pairs: int = 32, dim: int = 64, n_layers: int = 2,
                       n_heads: int = 4, lr: float = 3e-3, seed: int = 0) -> tuple[Transformer, float]:
    """Train a fresh encoder on who-did-what; returns the model and the final training loss."""
    torch.manual_seed(seed)
    cfg = TransformerConfig(kind="encoder", vocab_size=len(VOCAB), dim=dim, n_layers=n_layers, n_heads=n_heads,
                            ffn_mult=2.0, max_seq_len=LENGTH, encoding=encoding)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)

    def next_loss():
        batch = sample_who_did_what(gen, batch_pairs)
        loss = F.cross_entropy(answer_logits(model, batch), batch.label)
        return loss, lambda: float(loss.detach())

    return model, train_steps(model, opt, sched, next_loss, steps=steps)  # the lab's loop, without clipping


@torch.no_grad()
def evaluate_who_did_what(model: Transformer, batch: WhoDidWhat) -> dict[str, float]:
    """Accuracy, and the share of mirrored pairs answered identically (1.0 means blind to order)."""
    model.eval()
    pred = answer_logits(model, batch).argmax(-1)
    return {"accuracy": float((pred == batch.label).float().mean()),
            "same_answer_for_mirror": float((pred[0::2] == pred[1::2]).float().mean())}


def run_demo(encodings: list[str], *, steps: int = 300, seed: int = 0, threads: int | None = None) -> list[dict]:
    """Train and evaluate each encoding; print the table; return its rows."""
    if threads is not None:
        torch.set_num_threads(threads)
    test = sample_who_did_what(torch.Generator().manual_seed(10_000 + seed), 500)
    print("who-did-what: does '[CLS] the cat chases the dog ? cat' get a different answer than '... dog ? cat'?")
    print(f"e.g. {test.sentence(0)!r} -> {'yes' if test.label[0] else 'no'};  "
          f"{test.sentence(1)!r} -> {'yes' if test.label[1] else 'no'}")
    print(f"tiny bidirectional encoder (2 layers, dim 64), {steps} steps each; test: {len(test.label)} sentences "
          f"in mirrored pairs\n")
    header = f"{'encoding':<12} {'train loss':>10} {'test acc':>9} {'same answer for mirror':>23} {'time':>6}"
    print(header)
    print("-" * len(header))
    rows = []
    for name in encodings:
        start = time.perf_counter()
        model, loss = train_who_did_what(name, steps=steps, seed=seed)
        metrics = evaluate_who_did_what(model, test)
        row = {"encoding": name, "train_loss": loss, **metrics, "seconds": time.perf_counter() - start}
        rows.append(row)
        print(f"{name:<12} {loss:>10.3f} {metrics['accuracy']:>8.1%} {metrics['same_answer_for_mirror']:>23.1%} "
              f"{row['seconds']:>5.1f}s", flush=True)
    print("\nWithout positions ('nope') the encoder is permutation-equivariant: a sentence and its mirror get the "
          "same answer, so accuracy is 50% (chance). Any positional encoding lets it tell who did what.")
    return rows
