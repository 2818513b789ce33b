"""Every task: deterministic under a seed, documented shapes, and labels that match the task's definition."""

import pytest
import torch

from posenc.lab.tasks import IGNORE, get_task, registered_tasks
from posenc.lab.tasks.base import task_class
from posenc.lab.tasks.modular_arithmetic import OPS, evaluate_mod


def _length(name: str) -> int:
    cls = task_class(name)
    return max(cls.min_length, 5)


@pytest.mark.parametrize("name", registered_tasks())
def test_deterministic_and_shapes(name):
    task = get_task(name)
    length = _length(name)
    a = task.sample_batch(torch.Generator().manual_seed(3), 4, length)
    b = task.sample_batch(torch.Generator().manual_seed(3), 4, length)
    c = task.sample_batch(torch.Generator().manual_seed(4), 4, length)
    assert a.keys() == b.keys() and {"inputs", "targets"} <= set(a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert any(not torch.equal(a[k], c[k]) for k in a)
    inputs, targets = a["inputs"], a["targets"]
    assert inputs.dtype == targets.dtype == torch.long
    if task.kind == "encoder_decoder":  # the target side is what the encoding's max_seq_len must cover
        assert a["decoder_inputs"].shape == targets.shape and inputs.shape[0] == targets.shape[0] == 4
        assert max(inputs.shape[1], targets.shape[1]) == task.sequence_length(length)
    else:
        assert inputs.shape == targets.shape == (4, task.sequence_length(length))
    assert inputs.min() >= 0 and inputs.max() < task.vocab_size
    scored = targets[targets != IGNORE]
    assert scored.numel() > 0 and scored.min() >= 0 and scored.max() < task.vocab_size
    if "padding_mask" in a:
        assert a["padding_mask"].dtype == torch.bool and a["padding_mask"].shape == inputs.shape


@pytest.mark.parametrize("name", registered_tasks())
def test_too_short_length_is_a_clear_error(name):
    task = get_task(name)
    with pytest.raises(ValueError, match=f"task '{name}': length must be an int >= {task.min_length}"):
        task.sample_batch(torch.Generator().manual_seed(0), 2, task.min_length - 1)


def _io(batch):
    """(input part, answer part) of an encoder batch in the output-positions layout."""
    scored = batch["targets"][0] != IGNORE
    first = int(scored.nonzero()[0])
    return batch["inputs"][:, :first], batch["targets"][:, first:]


def _gen():
    return torch.Generator().manual_seed(1)


def test_reverse_duplicate_sort_parity_labels():
    x, y = _io(get_task("reverse_string").sample_batch(_gen(), 8, 7))
    assert torch.equal(y, x.flip(1))
    x, y = _io(get_task("duplicate_string").sample_batch(_gen(), 8, 7))
    assert torch.equal(y, torch.cat((x, x), 1))
    x, y = _io(get_task("bucket_sort").sample_batch(_gen(), 8, 7))
    assert torch.equal(y, x.sort(1).values)
    x, y = _io(get_task("parity_check").sample_batch(_gen(), 8, 7))
    assert torch.equal(y[:, 0], x.sum(1) % 2)


def test_binary_addition_is_integer_addition():
    x, y = _io(get_task("binary_addition").sample_batch(_gen(), 16, 9))
    weights = 2 ** torch.arange(10)
    a, b = (x[:, :9] * weights[:9]).sum(1), (x[:, 10:] * weights[:9]).sum(1)
    assert (x[:, 9] == 2).all()  # the "+" token
    assert torch.equal((y * weights).sum(1), a + b)


def test_modular_arithmetic_matches_python_precedence():
    task = get_task("modular_arithmetic")
    x, y = _io(task.sample_batch(_gen(), 16, 6))
    for row, answer in zip(x.tolist(), y[:, 0].tolist()):
        expression = "".join(task.vocab[t] for t in row)
        assert eval(expression) % 5 == answer, expression  # noqa: S307 (our own digits and + - * only)
    assert evaluate_mod([3, 4, 2], ["+", "*"]) == (3 + 4 * 2) % 5 and set(OPS) == {"+", "-", "*"}


def test_missing_duplicate_answer_is_the_hidden_bit():
    x, y = _io(get_task("missing_duplicate").sample_batch(_gen(), 16, 6))
    hidden = (x == 2).nonzero()
    assert hidden.shape[0] == 16  # exactly one hidden symbol per row
    for row, col in hidden.tolist():
        partner = col + 6 if col < 6 else col - 6
        assert int(x[row, partner]) == int(y[row, 0])


@pytest.mark.parametrize("name", ["who_did_what", "negation"])
def test_mirrored_pairs_share_their_words_and_flip_the_answer(name):
    task = get_task(name)
    batch = task.sample_batch(_gen(), 16, task.min_length + 2)
    tokens, answer = batch["inputs"], batch["targets"][:, 0]
    assert (batch["targets"][:, 1:] == IGNORE).all()
    for i in range(0, 16, 2):
        assert torch.equal(tokens[i].sort().values, tokens[i + 1].sort().values)  # the same bag of words
        assert answer[i] != answer[i + 1]
    assert torch.equal(batch["padding_mask"], tokens != 0)
    with pytest.raises(ValueError, match="batch_size must be even"):
        task.sample_batch(_gen(), 3, task.min_length)


def test_negation_label_follows_the_negated_adjective():
    from posenc.lab.tasks.negation import POSITIVE

    task = get_task("negation")
    batch = task.sample_batch(_gen(), 20, 10)
    for row, label in zip(batch["inputs"].tolist(), batch["targets"][:, 0].tolist()):
        words = [task.vocab[t] for t in row]
        negated = words[words.index("not") + 1]
        assert task.vocab[label] == ("negative" if negated in POSITIVE else "positive")


@pytest.mark.parametrize("name", ["decoder_copy", "decoder_reverse"])
def test_decoder_copy_and_reverse(name):
    task = get_task(name)
    batch = task.sample_batch(_gen(), 4, 5)
    inputs, targets = batch["inputs"], batch["targets"]
    assert inputs.shape == targets.shape == (4, 11)
    x = inputs[:, :5]
    expected = x.flip(1) if name == "decoder_reverse" else x
    assert (targets[:, :5] == IGNORE).all()  # x and the separator are given, not predicted
    assert (inputs[:, 5] == task.token(">")).all()
    assert torch.equal(targets[:, 5:10], expected) and (targets[:, 10] == task.token(".")).all()
    assert torch.equal(inputs[:, 6:], targets[:, 5:10])  # teacher forcing: the answer so far is the input


def test_lm_windows_and_fixed_split(tmp_path):
    task = get_task("lm")
    batch = task.sample_batch(_gen(), 3, 16)
    assert torch.equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    assert get_task("lm").content_hash == task.content_hash and len(task.content_hash) == 64
    # evaluation: the same validation bytes at every length, as non-overlapping windows
    short = torch.cat([b["inputs"].flatten() for b in task.eval_batches(None, 4, 64, 1)])
    long = torch.cat([b["inputs"].flatten() for b in task.eval_batches(None, 4, 256, 1)])
    assert torch.equal(short, long) and short.numel() == task.eval_tokens
    assert torch.equal(short, task.valid[: short.numel()])
    (tmp_path / "a.txt").write_text("hello world " * 50)
    custom = get_task("lm", text=str(tmp_path), eval_tokens=32)
    assert custom.content_hash != task.content_hash and len(custom.train) == 540
    with pytest.raises(ValueError, match="neither a file nor a folder"):
        get_task("lm", text=str(tmp_path / "missing"))


def test_unknown_task_suggests_a_name():
    with pytest.raises(ValueError, match="Did you mean 'parity_check'"):
        get_task("parity_chek")


def test_flip_flop_reads_return_the_last_written_bit():
    task = get_task("flip_flop")
    batch = task.sample_batch(_gen(), 16, 20)
    seq = torch.cat((batch["inputs"], batch["targets"][:, -1:]), dim=1)  # the last read's bit completes the row
    for row, target in zip(seq.tolist(), batch["targets"].tolist()):
        words = [task.vocab[t] for t in row]
        assert words[0] == "w" and words[-2] == "r"
        last = None
        for i in range(0, len(words), 2):
            op, bit = words[i], words[i + 1]
            if op == "w":
                last = bit
            if op == "r":
                assert bit == last and task.vocab[target[i]] == last  # scored at the read token, predicting the bit
            else:
                assert target[i] == IGNORE


def test_counting_answer_is_the_count_since_the_last_reset():
    task = get_task("counting", n_vars=2)
    batch = task.sample_batch(_gen(), 16, 12)
    for row, target in zip(batch["inputs"].tolist(), batch["targets"].tolist()):
        words = [task.vocab[t] for t in row]
        values = {"x": 0, "y": 0}
        i = 0
        while words[i] != "print":
            if words[i] == "pass":
                i += 2
            elif words[i + 1] == "++":
                values[words[i]] += 1
                i += 3
            else:
                values[words[i]] = 0
                i += 4
        scored = [t for t in target if t != IGNORE]
        assert len(scored) == 1 and task.vocab[scored[0]] == str(values[words[i + 1]])
        assert target.index(scored[0]) == i + 1  # predicted at the variable's token after "print"


def test_selective_copy_associative_recall_and_passkey():
    x, y = _io(get_task("selective_copy").sample_batch(_gen(), 8, 12))
    for row, out in zip(x.tolist(), y.tolist()):
        assert [t for t in row if t != 8] == out and len(out) == 3
    task = get_task("associative_recall")
    x, y = _io(task.sample_batch(_gen(), 8, 10))
    for row, out in zip(x.tolist(), y[:, 0].tolist()):
        keys, values, asked = row[0:-1:2], row[1:-1:2], row[-1]
        assert len(set(keys)) == 10 and values[keys.index(asked)] == out
    with pytest.raises(ValueError, match="at most 64 pairs"):
        task.sample_batch(_gen(), 2, 65)
    task = get_task("passkey")
    batch = task.sample_batch(_gen(), 4, 6)
    for row, target in zip(batch["inputs"].tolist(), batch["targets"].tolist()):
        words = task.decode(row).split()
        key = words[words.index("key") + 2: words.index("key") + 7]
        assert task.decode([t for t in target if t != IGNORE]).split() == key
        assert words.count("green") == 6


def test_scan_grammar_and_length_split_match_the_paper():
    from posenc.lab.tasks.scan import scan_commands

    commands = dict(scan_commands())
    lengths = [len(a) for a in commands.values()]
    assert len(commands) == 20_910  # Lake & Baroni 2018
    assert sum(n <= 22 for n in lengths) == 16_990 and sum(24 <= n <= 48 for n in lengths) == 3_920
    assert commands["jump around left twice"] == ("LTURN", "JUMP") * 8
    assert commands["walk after run left"] == ("LTURN", "RUN", "WALK")
    assert commands["look opposite right thrice"] == ("RTURN", "RTURN", "LOOK") * 3
    task = get_task("scan")
    batch = task.sample_batch(_gen(), 8, 30)
    for src, dec, tgt in zip(batch["inputs"].tolist(), batch["decoder_inputs"].tolist(), batch["targets"].tolist()):
        command = " ".join(task.vocab[t] for t in src if t != 0)
        actions = [task.vocab[t] for t in tgt if t != IGNORE]
        assert actions[-1] == "</s>" and tuple(actions[:-1]) == commands[command] and 24 <= len(actions) - 1 <= 30
        assert dec[0] == task.token("<s>") and dec[1:len(actions)] == tgt[:len(actions) - 1]
    with pytest.raises(ValueError, match="no command has 23..23 actions"):
        task.sample_batch(_gen(), 2, 23)


def test_reorder_moves_each_verb_to_the_end_of_its_clause():
    from posenc.lab.tasks.reorder import VERBS

    task = get_task("reorder")
    batch = task.sample_batch(_gen(), 8, 3)
    for src, tgt in zip(batch["inputs"].tolist(), batch["targets"].tolist()):
        source = [task.vocab[t] for t in src if t != 0]
        target = [task.vocab[t] for t in tgt if t != IGNORE][:-1]
        assert sorted(source) == sorted(target) and source.count("and") == 2
        for s_clause, t_clause in zip(" ".join(source).split(" and "), " ".join(target).split(" and ")):
            s_words, t_words = s_clause.split(), t_clause.split()
            verb = next(w for w in s_words if w in VERBS)
            assert t_words[-1] == verb and t_words[:-1] == [w for w in s_words if w != verb]
