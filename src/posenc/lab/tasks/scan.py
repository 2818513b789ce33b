"""SCAN (Lake & Baroni 2018, arXiv 1711.00350), generated from its published grammar, with the length split.

Two protocols:

- ``scan``: encoder-decoder, the original paper's setting (a bidirectional encoder reads the command, a causal
  decoder writes the actions).
- ``scan_decoder``: decoder-only, as Kazemnejad et al. (arXiv 2305.19466) run it: ``command -> actions </s>`` in one
  causal sequence, the loss on the actions only, exact match of greedy decoding on the *whole* length-split test
  set (all 3,920 commands with 24..48 actions), not a sample of it.
"""

from __future__ import annotations

import functools
import itertools

import torch
from torch import Tensor

from posenc.lab.tasks._seq2seq import BOS, EOS, PAD, seq2seq_batch
from posenc.lab.tasks.base import IGNORE, Task, register_task

__all__ = ["Scan", "ScanDecoder", "scan_commands"]

PRIMITIVES = {"walk": "WALK", "look": "LOOK", "run": "RUN", "jump": "JUMP"}
TURN = {"left": "LTURN", "right": "RTURN"}
COMMAND_WORDS = ("walk", "look", "run", "jump", "turn", "left", "right", "opposite", "around", "twice", "thrice",
                 "and", "after")
ACTIONS = ("WALK", "LOOK", "RUN", "JUMP", "LTURN", "RTURN")
SOURCE_LENGTH = 9  # the longest command, in words
TRAIN_MAX_ACTIONS = 22  # the length split: train on action sequences <= 22, test on 24..48


def _directions() -> list[tuple[str, list[str]]]:
    """D -> U left | U right | turn left | turn right, with the U's: (command, actions)."""
    out = [(u, [a]) for u, a in PRIMITIVES.items()]
    for d, turn in TURN.items():
        out += [(f"{u} {d}", [turn, a]) for u, a in PRIMITIVES.items()]
        out.append((f"turn {d}", [turn]))
    return out


def _verb_phrases() -> list[tuple[str, list[str]]]:
    """V -> D | U | U/turn opposite dir | U/turn around dir."""
    out = _directions()
    for d, turn in TURN.items():
        for u, a in [*PRIMITIVES.items(), ("turn", None)]:
            step = [turn] if a is None else [turn, a]
            out.append((f"{u} opposite {d}", [turn] + step))
            out.append((f"{u} around {d}", step * 4))
    return out


@functools.lru_cache(maxsize=1)
def scan_commands() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Every SCAN command with its action sequence (20,910 of them), in a fixed order."""
    sentences = []
    for cmd, acts in _verb_phrases():
        sentences += [(cmd, acts), (f"{cmd} twice", acts * 2), (f"{cmd} thrice", acts * 3)]
    commands = list(sentences)
    for (c1, a1), (c2, a2) in itertools.product(sentences, sentences):
        commands.append((f"{c1} and {c2}", a1 + a2))
        commands.append((f"{c1} after {c2}", a2 + a1))
    return tuple((c, tuple(a)) for c, a in commands)


@register_task("scan")
class Scan(Task):
    """Encoder-decoder: translate a SCAN command into its actions; exact match of the whole action sequence.

    ``length`` is the longest action sequence drawn: up to 22 the training split (commands with at most 22
    actions); past 22 the test split of the length split, restricted to at most ``length`` actions (24..48 in all).

    Example:
        ``jump around left twice`` -> ``LTURN JUMP LTURN JUMP LTURN JUMP LTURN JUMP`` x 2 (16 actions);
        ``walk after run left`` -> ``LTURN RUN WALK``.
    """

    kind = "encoder_decoder"
    vocab = (PAD, BOS, EOS) + COMMAND_WORDS + ACTIONS
    train_lengths = (TRAIN_MAX_ACTIONS, TRAIN_MAX_ACTIONS)
    eval_lengths = (22, 30, 36, 48)
    min_length = 2
    paper = "1711.00350"
    summary = "SCAN length split, encoder-decoder: commands to actions, train <= 22 actions, test 24..48 (exact match)"

    def __init__(self) -> None:
        self._by_length: dict[int, list[int]] = {}
        for i, (_, acts) in enumerate(scan_commands()):
            self._by_length.setdefault(len(acts), []).append(i)

    def pool(self, length: int) -> list[int]:
        """Indices of the commands drawn at ``length``."""
        lo = 0 if length <= TRAIN_MAX_ACTIONS else TRAIN_MAX_ACTIONS + 1
        return [i for n, idx in sorted(self._by_length.items()) if lo < n <= length for i in idx]

    def sequence_length(self, length: int) -> int:
        return max(SOURCE_LENGTH, length + 1)  # the longer side: commands have <= 9 words, actions + </s>

    def draw(self, generator: torch.Generator, batch_size: int, length: int) -> list[int]:
        """``batch_size`` command indices drawn uniformly from :meth:`pool` at ``length``."""
        self.check_length(length)
        pool = self.pool(length)
        if not pool:
            raise ValueError(f"task {self.name!r}: no command has {TRAIN_MAX_ACTIONS + 1}..{length} actions (the test "
                             f"split starts at 24); use a length of at least 24 or at most {TRAIN_MAX_ACTIONS}.")
        picks = torch.randint(0, len(pool), (batch_size,), generator=generator).tolist()
        return [pool[p] for p in picks]

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        tok = {w: i for i, w in enumerate(self.vocab)}
        commands = [scan_commands()[i] for i in self.draw(generator, batch_size, length)]
        return seq2seq_batch([[tok[w] for w in c.split()] for c, _ in commands],
                             [[tok[a] for a in acts] for _, acts in commands], pad=tok[PAD], bos=tok[BOS],
                             eos=tok[EOS], src_len=SOURCE_LENGTH, tgt_len=length)


SEP = "->"


@register_task("scan_decoder")
class ScanDecoder(Scan):
    """Decoder-only SCAN (the Kazemnejad et al. protocol): ``command -> actions </s>``, loss on the actions.

    ``length`` is as for :class:`Scan`: at most 22 actions the training split, 23..48 the test split (with at most
    ``length`` actions). Sequences are right-padded; a causal decoder never lets an earlier position see padding, and
    padding is not scored. With teacher forcing, "every scored token right" is exactly greedy decoding's exact match.
    Evaluation past the training split reads the whole test split once, in a fixed order, at every length.

    Example:
        inputs  ``walk after run left -> LTURN RUN WALK``, targets ``_ _ _ _ LTURN RUN WALK </s>``.
    """

    kind = "decoder"
    vocab = (PAD, SEP, EOS) + COMMAND_WORDS + ACTIONS
    train_lengths = (TRAIN_MAX_ACTIONS, TRAIN_MAX_ACTIONS)
    eval_lengths = (22, 48)
    paper = "2305.19466"
    summary = ("SCAN length split, decoder-only (Kazemnejad protocol): train <= 22 actions, exact match of greedy "
               "decoding on the whole test split (24..48 actions)")

    def sequence_length(self, length: int) -> int:
        return SOURCE_LENGTH + 1 + length  # command, ->, actions, </s>, less the last token

    def _batch(self, indices: list[int], length: int) -> dict[str, Tensor]:
        tok = {w: i for i, w in enumerate(self.vocab)}
        t = self.sequence_length(length)
        inputs = torch.full((len(indices), t), tok[PAD], dtype=torch.long)
        targets = torch.full((len(indices), t), IGNORE, dtype=torch.long)
        for row, i in enumerate(indices):
            command, actions = scan_commands()[i]
            src = [tok[w] for w in command.split()] + [tok[SEP]]
            seq = src + [tok[a] for a in actions] + [tok[EOS]]
            inputs[row, :len(seq) - 1] = torch.tensor(seq[:-1])
            targets[row, len(src) - 1:len(seq) - 1] = torch.tensor(seq[len(src):])  # actions and </s>
        return {"inputs": inputs, "targets": targets}

    def sample_batch(self, generator: torch.Generator, batch_size: int, length: int) -> dict[str, Tensor]:
        return self._batch(self.draw(generator, batch_size, length), length)

    def eval_batches(self, generator: torch.Generator, batch_size: int, length: int, n_batches: int):
        """In the training split: ``n_batches`` random batches. Past it: every test command, once, in order."""
        if length <= TRAIN_MAX_ACTIONS:
            yield from super().eval_batches(generator, batch_size, length, n_batches)
            return
        self.check_length(length)
        pool = self.pool(length)
        for first in range(0, len(pool), batch_size):
            yield self._batch(pool[first:first + batch_size], length)
