"""Edges of the core that mutation testing (``make test-mutate``, group core) found no test for: a fully masked row
of the safe softmax, what ``register`` and ``register_backend`` keep and refuse, the words of errors a user reads,
which calls the CPU FlexAttention backend refuses, and when the dense mask needs a batch axis."""

import dataclasses

import pytest
import torch

import posenc
from posenc import AttentionCall, Positions
from posenc.backends import BACKENDS
from posenc.chunked import dense_mask_shape
from posenc.terms import safe_softmax


def test_safe_softmax_gives_a_dead_row_zeros_and_zero_gradients():
    scores = torch.tensor([[0.0, 1.0, 2.0], [float("-inf")] * 3], requires_grad=True)
    probs = safe_softmax(scores)
    assert torch.equal(probs[1], torch.zeros(3))  # no key to attend: nothing, not NaN, not a distribution
    torch.testing.assert_close(probs[0], torch.softmax(scores[0].detach(), -1))
    (probs * torch.arange(3.0)).sum().backward()
    assert torch.equal(scores.grad[1], torch.zeros(3))


@pytest.mark.parametrize("name", ["my-encoding", "Rope", "2d", ""])
def test_register_refuses_names_that_are_not_lowercase_identifiers(name):
    with pytest.raises(ValueError, match="lowercase identifiers"):
        posenc.register(name)


def test_register_refuses_a_name_that_is_not_a_string():
    with pytest.raises(ValueError, match="lowercase identifiers"):
        posenc.register(5)


def test_register_backend_keeps_what_it_was_given():
    def supports(call):
        return None

    def suits(call):
        return "never chosen by auto"

    try:
        @posenc.register_backend("mutation_probe", priority=-5, supports=supports, suits=suits)
        def probe(call):
            return call.v

        entry = BACKENDS["mutation_probe"]
        assert (entry.fn, entry.supports, entry.suits, entry.priority) == (probe, supports, suits, -5)
    finally:
        BACKENDS.pop("mutation_probe", None)


def test_fractional_positions_are_refused_with_the_hint_to_use_a_scaling():
    pe = posenc.get_encoding("rope", dim=8, n_heads=2)
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(TypeError, match="Fractional positions are not supported here: to stretch a RoPE model, use a "
                                        "scaling instead"):
        posenc.attention(q, q, q, pe, q_pos=torch.arange(4.0), k_pos=torch.arange(4.0))


def test_bad_segment_ids_name_what_came_in():
    pos = Positions(pos=torch.arange(5), segment_ids=torch.zeros(2, 5))  # float ids
    with pytest.raises(ValueError, match=r"got torch.float32 of shape \(2, 5\)\."):
        pos.validate(5, batch=2)
    with pytest.raises(ValueError, match=r"got list\."):
        Positions(pos=torch.arange(5), segment_ids=[[0] * 5]).validate(5, batch=1)


def test_auto_says_why_it_leaves_compiled_flex_alone_on_cpu():
    pe = posenc.get_encoding("alibi", dim=4, n_heads=2)
    q = torch.randn(1, 2, 8, 4)
    if "flex" not in BACKENDS or posenc.attention_settings.get("FLEX_CPU_MIN_ELEMENTS") != float("inf"):
        pytest.skip("needs torch's flex_attention with the default FLEX_CPU_MIN_ELEMENTS")
    with torch.no_grad():
        why = posenc.explain(q, q, q, pe, causal=True)
    assert "auto does not use compiled FlexAttention on CPU (torch's CPU flex kernel fails to compile some " \
           "score_mods" in why


@pytest.mark.parametrize("which", ["q_pos", "k_pos"])
def test_flex_on_cpu_refuses_per_sequence_positions_of_queries_or_keys(which):
    pe = posenc.get_encoding("alibi", dim=4, n_heads=2)
    q = torch.randn(2, 2, 6, 4)
    pos = {"q_pos": torch.arange(6), "k_pos": torch.arange(6)}
    pos[which] = torch.arange(6).expand(2, 6)  # (B, T): per sequence
    if "flex" not in BACKENDS:
        pytest.skip("needs torch's flex_attention")
    with torch.no_grad():
        why = posenc.explain(q, q, q, pe, backend="auto", **pos)
    assert "per-sequence (B, T) positions" in why


def _call(q_pos, k_pos, b=3):
    q = torch.randn(b, 2, 4, 4)
    return AttentionCall(q=q, k=q, v=q, pe=posenc.get_encoding("alibi", dim=4, n_heads=2), q_pos=q_pos, k_pos=k_pos,
                         causal=True, attn_mask=None, scale=0.5)


def test_the_dense_mask_has_a_batch_axis_only_when_positions_differ_per_sequence():
    shared = torch.arange(4)
    assert dense_mask_shape(_call(shared, shared)) == (1, 2, 4, 4)
    assert dense_mask_shape(_call(shared[None], shared[None])) == (1, 2, 4, 4)  # (1, T): shared by the batch
    per_sequence = torch.arange(4).expand(3, 4)
    assert dense_mask_shape(_call(per_sequence, shared)) == (3, 2, 4, 4)
    assert dense_mask_shape(_call(shared, per_sequence)) == (3, 2, 4, 4)


def test_default_positions_continue_each_row_from_its_own_offset():
    assert torch.equal(posenc.default_positions(3, offset=torch.tensor([2, 5])), torch.tensor([[2, 3, 4], [5, 6, 7]]))
    assert torch.equal(posenc.default_positions(3, offset=torch.tensor(4)), torch.tensor([4, 5, 6]))
    assert torch.equal(posenc.default_positions(2, offset=4), torch.tensor([4, 5]))
    on_meta = posenc.default_positions(2, offset=torch.tensor([1, 2]), device="meta")
    assert on_meta.device.type == "meta" and on_meta.dtype == torch.long and on_meta.shape == (2, 2)


def test_without_positions_queries_are_the_last_keys_and_more_queries_than_keys_start_at_zero():
    pe = posenc.get_encoding("alibi", dim=8, n_heads=2)
    q, k = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 6, 4)
    torch.testing.assert_close(posenc.attention(q, k, k, pe), posenc.attention(q, k, k, pe, q_pos=torch.arange(2, 6),
                                                                                 k_pos=torch.arange(6)))
    q, k = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 4)  # Tq > Tk (no causal mask): both start at 0
    torch.testing.assert_close(posenc.attention(q, k, k, pe), posenc.attention(q, k, k, pe, q_pos=torch.arange(4),
                                                                                 k_pos=torch.arange(2)))


def test_an_encoding_with_terms_and_the_wrong_head_count_is_refused():
    pe = posenc.get_encoding("transformer_xl", dim=16, n_heads=4)
    q = torch.randn(1, 2, 5, 4)  # 2 heads; the encoding was built for 4
    with pytest.raises(ValueError, match=r"transformer_xl was built for n_heads=4 but q has 2 heads"):
        posenc.attention(q, q, q, pe)


def test_shape_errors_name_the_tensors_and_their_shapes():
    q, k = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match=r"k \(1, 2, 5, 4\) and v \(1, 2, 6, 4\) must agree on heads and length"):
        posenc.attention(q, k, torch.randn(1, 2, 6, 4))
    with pytest.raises(ValueError, match=r"^k must have shape \(B, H, T, D\) = 4 dims; got shape \(2, 5, 4\)"):
        posenc.attention(q, torch.randn(2, 5, 4), k)


def test_past_max_seq_len_the_error_names_the_encoding():
    pe = posenc.get_encoding("learned", dim=8, n_heads=2, max_seq_len=4)
    with pytest.raises(ValueError, match=r"^learned: position 5 is past max_seq_len=4"):
        pe.check_length(torch.arange(6))


def test_a_per_sequence_4d_mask_gives_the_dense_mask_a_batch_axis():
    shared = torch.arange(4)
    call = _call(shared, shared)
    mask = torch.ones(3, 1, 4, 4, dtype=torch.bool)
    assert dense_mask_shape(dataclasses.replace(call, attn_mask=mask)) == (3, 2, 4, 4)
    assert dense_mask_shape(dataclasses.replace(call, attn_mask=mask[:1].expand(1, 2, 4, 4))) == (1, 2, 4, 4)


# -- surviving mutants of the seed-2 sample (core) --------------------------------------------------------------------


def test_check_bool_and_check_number_end_with_the_hints_they_are_given_and_nothing_else():
    from posenc._checks import check_bool, check_number

    with pytest.raises(TypeError, match=r"^flag must be True or False \(a bool\); got str 'no'\.$"):
        check_bool("no", "flag")  # no hint: the message ends at what came in
    with pytest.raises(TypeError, match=r"got str '3'\. Use a scale\. Write it without quotes\.$"):
        check_number("3", "scale", hint="Use a scale.", type_hint="Write it without quotes.")


def test_a_features_entry_that_is_not_a_tensor_is_named_with_its_type():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(TypeError, match=r"features must map names \(str\) to tensors; got 'gate': list\."):
        posenc.attention(q, q, q, features={"gate": [1.0, 2.0]})


def test_auto_falls_back_to_the_reference_backend_when_every_faster_one_refuses(monkeypatch):
    q = torch.randn(1, 2, 3, 4)
    for name in [n for n in BACKENDS if n != "reference"]:
        monkeypatch.delitem(BACKENDS, name)
    pe = posenc.get_encoding("alibi", dim=8, n_heads=2)
    assert posenc.explain(q, q, q, pe).startswith("reference: no faster backend supports this call (skipped )")
    expected = torch.softmax(q @ q.transpose(-1, -2) / 2 + pe.bias(torch.arange(3), torch.arange(3)), -1) @ q
    torch.testing.assert_close(posenc.attention(q, q, q, pe), expected)


def test_flex_refuses_a_float_mask_and_says_to_pass_a_bool_one():
    if "flex" not in BACKENDS:
        pytest.skip("needs torch's flex_attention")
    pe = posenc.get_encoding("alibi", dim=8, n_heads=2)
    q = torch.randn(1, 2, 3, 4)
    with torch.no_grad(), pytest.raises(ValueError, match=r"exactly: a float attn_mask cannot become a block_mask; "
                                                          r"pass a bool mask \(True = attend\) or use 'chunked'\. "
                                                          r"Use backend='auto'\.$"):
        posenc.attention(q, q, q, pe, attn_mask=torch.zeros(3, 3), backend="flex")


def test_unknown_options_list_only_the_encodings_own_options():
    with pytest.raises(TypeError, match=r"rope: unknown option\(s\) \['bogus'\]; it accepts \[") as err:
        posenc.get_encoding("rope", dim=8, n_heads=2, bogus=1)
    accepted = str(err.value).split("it accepts ")[1]
    assert "'layout'" in accepted
    for common in ("'dim'", "'n_heads'", "'max_seq_len'", "'causal'", "'self'"):
        assert common not in accepted  # set by get_encoding itself, never an option


@pytest.mark.parametrize("arg", ["dim", "n_heads", "max_seq_len"])
def test_a_size_below_one_is_named_in_the_error(arg):
    sizes = {"dim": 8, "n_heads": 2, "max_seq_len": 16, arg: 0}
    with pytest.raises(ValueError, match=rf"^RoPE: {arg} must be an int >= 1; got 0\."):
        posenc.get_encoding("rope", **sizes)


def _bound_alibi(pos):
    pe = posenc.get_encoding("alibi", dim=8, n_heads=2)
    positions = Positions(pos=pos).validate(pos.shape[-1], batch=pos.shape[0] if pos.dim() == 2 else None)
    return positions, pe.bind(positions.with_keys(positions.pos, positions.max_pos))


def test_a_bound_view_trusts_its_own_positions_and_the_slices_of_them_only():
    positions, view = _bound_alibi(torch.arange(12).view(2, 6))  # (B, T) contiguous
    pos = positions.pos
    assert view.trusts(pos) and view.trusted_max(pos) == 11
    assert view.trusts(pos[:, 2:4]) and view.trusts(pos[1]) and view.trusts(pos[:, :3])  # blocks chunked takes
    assert not view.trusts(pos.clone())  # same values, other storage: never checked
    assert view.trusted_max(pos.clone()) is None
    big = torch.arange(8)
    positions, view = _bound_alibi(big[2:])
    assert view.trusts(big[3:5]) and not view.trusts(big[:3])  # big[2:] validated does not vouch for big[:2]
    big_before = positions.pos
    big_before.add_(0)  # an in-place change since validation: trusted no more
    assert not view.trusts(big_before)


def test_a_bound_view_builds_its_bias_once_for_every_dense_call(monkeypatch):
    # the dense backend passes the bound positions themselves (not a slice of all keys), so the view's table is reused
    positions, view = _bound_alibi(torch.arange(5))
    built = []
    original = view._bias
    monkeypatch.setattr(view, "_bias", lambda q_pos, k_pos: built.append(1) or original(q_pos, k_pos))
    q = torch.randn(1, 2, 5, 4)
    for _ in range(3):
        posenc.attention(q, q, q, view, positions=positions.with_keys(positions.pos, positions.max_pos),
                         backend="dense")
    assert len(built) == 1


def test_bool_positions_are_refused_as_a_mask_not_as_a_narrow_integer_dtype():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(TypeError, match=r"q_pos must hold integer positions \(int64\); got dtype torch\.bool\.") as e:
        posenc.attention(q, q, q, q_pos=torch.ones(3, dtype=torch.bool))
    assert "wrap around" not in str(e.value)


def test_bool_segment_ids_are_refused():
    pos = Positions(pos=torch.arange(4), segment_ids=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"segment_ids must be an integer tensor \(B, T\) = \(1, 4\), one document id "
                                         r"per token; got torch\.bool of shape \(1, 4\)\."):
        pos.validate(4, batch=1)


def test_chunked_slices_a_one_dimensional_key_mask_per_causal_block(monkeypatch):
    monkeypatch.setattr(posenc.attention_settings, "CHUNK_ELEMENTS", 1)  # blocks of 16 rows: key_stop 16, 32, 40
    pe = posenc.get_encoding("alibi", dim=8, n_heads=2)
    q, k, v = torch.randn(1, 2, 40, 4), torch.randn(1, 2, 40, 4), torch.randn(1, 2, 40, 4)
    keys = torch.rand(40) > 0.3  # (Tk,): one flag per key, broadcast over every row
    keys[0] = True  # every causal row sees a key
    dense = posenc.attention(q, k, v, pe, causal=True, attn_mask=keys, backend="dense")
    torch.testing.assert_close(posenc.attention(q, k, v, pe, causal=True, attn_mask=keys, backend="chunked"), dense)


def test_visibility_mask_slices_a_key_mask_of_any_rank_to_the_blocks_keys():
    # posenc.attention makes every mask 4-D; visibility_mask also takes an AttentionCall built by hand
    from posenc.blocks import visibility_mask

    keys = torch.tensor([True, False, True, True, False])
    call = dataclasses.replace(_call(torch.arange(4), torch.arange(5), b=1), causal=False, attn_mask=keys)
    call = dataclasses.replace(call, k=torch.randn(1, 2, 5, 4), v=torch.randn(1, 2, 5, 4))
    assert torch.equal(visibility_mask(call, 0, 4, 3), keys[:3])
    assert torch.equal(visibility_mask(call, 0, 4, 5), keys)
    rows = torch.rand(4, 5) > 0.5  # (Tq, Tk): rows and keys
    assert torch.equal(visibility_mask(dataclasses.replace(call, attn_mask=rows), 1, 3, 2), rows[1:3, :2])


# -- surviving mutants of the seed-3 sample (core) --------------------------------------------------------------------


def test_float_bounds_are_written_like_numbers_in_range_errors():
    from posenc._checks import check_number

    with pytest.raises(ValueError, match=r"^x must be a number >= 1 and <= 2\.5; got 0\.5\.$"):
        check_number(0.5, "x", minimum=1.0, maximum=2.5)


def test_features_shared_by_the_batch_are_accepted_and_other_batch_sizes_refused():
    q = torch.randn(3, 2, 4, 4)
    posenc.explain(q, q, q, features={"gate": torch.zeros(1, 2, 4, 1)})  # (1, ...): one for every sequence
    posenc.explain(q, q, q, features={"gate": torch.zeros(3, 2, 4, 1)})
    with pytest.raises(ValueError, match=r"features\['gate'\] must have shape \(B\|1, heads, Tk, X\) with B=3"):
        posenc.explain(q, q, q, features={"gate": torch.zeros(2, 2, 4, 1)})


def test_validated_positions_of_another_batch_size_are_refused():
    pos = Positions(pos=torch.arange(8).view(2, 4)).validate(4, batch=2)
    q = torch.randn(3, 2, 4, 4)
    with pytest.raises(ValueError, match=r"batch"):
        posenc.attention(q, q, q, positions=pos)


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_a_q_k_or_v_that_is_not_a_float_tensor_is_named(which):
    args = {"q": torch.randn(1, 2, 3, 4), "k": torch.randn(1, 2, 3, 4), "v": torch.randn(1, 2, 3, 4)}
    with pytest.raises(TypeError, match=rf"^{which} must be a tensor of shape \(B, H, T, D\); got list\."):
        posenc.attention(**{**args, which: [[1.0]]})
    with pytest.raises(TypeError, match=rf"^{which} must be a floating-point tensor; got torch\.int64\."):
        posenc.attention(**{**args, which: torch.ones(1, 2, 3, 4, dtype=torch.long)})


def test_check_positions_layout_calls_the_tensor_pos_by_default():
    from posenc.base import check_positions_layout

    with pytest.raises(TypeError, match=r"^pos must hold integer positions"):
        check_positions_layout(torch.ones(3), 3)


def test_a_block_casts_a_float_mask_to_its_compute_dtype():
    from posenc.backends import prepare_call
    from posenc.blocks import make_block

    q = torch.randn(1, 2, 3, 4, dtype=torch.bfloat16)
    mask = torch.zeros(3, 3, dtype=torch.bfloat16)  # additive, in the queries' dtype: kept as it is by the call
    call = prepare_call(q, q, q, posenc.get_encoding("alibi", dim=8, n_heads=2), attn_mask=mask)
    block = make_block(call, 0, 3, q, q, q)
    assert block.mask.dtype == block.q.dtype == torch.float32  # scores are computed in float32


def test_chunked_attention_with_no_queries_gives_an_empty_output_of_the_values_width():
    pe = posenc.get_encoding("alibi", dim=8, n_heads=2)
    q, k, v = torch.randn(1, 2, 0, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 6)
    assert posenc.attention(q, k, v, pe, backend="chunked").shape == (1, 2, 0, 6)


def test_default_positions_are_made_on_the_queries_device():
    pe = posenc.get_encoding("alibi", dim=8, n_heads=2)
    q, k = torch.randn(1, 2, 3, 4, device="meta"), torch.randn(1, 2, 5, 4, device="meta")
    call = posenc.backends.prepare_call(q, k, k, pe)
    assert call.q_pos.device.type == call.k_pos.device.type == "meta"
    assert posenc.attention(q, k, k, pe, backend="dense").shape == (1, 2, 3, 4)


def test_a_causal_flag_that_is_not_a_bool_says_which_direction_each_means():
    with pytest.raises(TypeError, match=r"^RoPE: causal must be True or False \(a bool\); got str 'False'\. True for "
                                        r"a decoder, False for an encoder\.$"):
        posenc.get_encoding("rope", dim=8, n_heads=2, causal="False")


# -- surviving mutants of the seed-4 sample (core) --------------------------------------------------------------------


def test_explain_names_flex_with_its_cpu_reason():
    if "flex" not in BACKENDS or posenc.attention_settings.get("FLEX_CPU_MIN_ELEMENTS") != float("inf"):
        pytest.skip("needs torch's flex_attention with the default FLEX_CPU_MIN_ELEMENTS")
    q = torch.randn(1, 2, 8, 4)
    with torch.no_grad():
        why = posenc.explain(q, q, q, posenc.get_encoding("alibi", dim=8, n_heads=2))
    assert "flex: auto does not use compiled FlexAttention on CPU (torch's CPU flex kernel fails to compile some " \
           "score_mods; opt in by setting posenc.attention_settings.FLEX_CPU_MIN_ELEMENTS)" in why


def test_flex_on_cpu_without_a_compiler_says_so(monkeypatch):
    if "flex" not in BACKENDS:
        pytest.skip("needs torch's flex_attention")
    monkeypatch.setattr(posenc.backends, "HAVE_CXX", False)
    q = torch.randn(1, 2, 3, 4)
    with torch.no_grad(), pytest.raises(ValueError, match=r"exactly: FlexAttention on CPU runs only under "
                                                          r"torch\.compile, which needs a C\+\+ compiler \(g\+\+ or "
                                                          r"clang\+\+\)\. Use backend='auto'\.$"):
        posenc.attention(q, q, q, posenc.get_encoding("alibi", dim=8, n_heads=2), backend="flex")


def test_explain_writes_a_mask_of_mebibytes_in_mib():
    q = torch.randn(1, 8, 512, 4)  # the dense mask: 8 * 512 * 512 float32 = 8 MiB
    why = posenc.explain(q, q, q, posenc.get_encoding("alibi", dim=32, n_heads=8))
    assert "dense mask (1, 8, 512, 512) = 8.0 MiB in float32" in why


def test_positions_without_key_positions_give_the_keys_the_same_ones():
    pe = posenc.get_encoding("alibi", dim=8, n_heads=2)
    q = torch.randn(1, 2, 4, 4)
    pos = torch.tensor([0, 2, 5, 9])  # gaps: ALiBi sees other distances than arange's
    torch.testing.assert_close(posenc.attention(q, q, q, pe, positions=Positions(pos=pos)),
                               posenc.attention(q, q, q, pe, q_pos=pos, k_pos=pos))


def test_q_k_and_v_on_different_devices_are_named():
    q = torch.randn(1, 2, 3, 4, device="meta")
    with pytest.raises(ValueError, match=r"^q, k and v must be on one device; got meta, cpu, cpu\.$"):
        posenc.attention(q, torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4))


def test_narrow_integer_positions_are_refused_with_the_fix():
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(TypeError, match=r"^q_pos must hold integer positions as int64 \(or int32\); got dtype "
                                        r"torch\.int16, whose differences wrap around\. Hint: q_pos\.long\(\)\.$"):
        posenc.attention(q, q, q, q_pos=torch.arange(3, dtype=torch.int16))


def test_list_encodings_counts_parameters_at_the_documented_probe_size():
    (row,) = [r for r in posenc.list_encodings() if r.name == "learned"]
    expected = posenc.get_encoding("learned", dim=512, n_heads=8, max_seq_len=2048)
    assert row.parameters == sum(p.numel() for p in expected.parameters())


def test_a_bound_view_trusts_no_non_tensor_and_knows_the_maxima_of_queries_and_keys():
    pe = posenc.get_encoding("alibi", dim=8, n_heads=2)
    positions = Positions(pos=torch.arange(3)).validate(3)
    keys = torch.cat((torch.tensor([7, 8]), positions.pos))  # cached keys past the queries' positions
    view = pe.bind(positions.with_keys(keys, 8))
    assert view.trusted_max(positions.pos) == 2 and view.trusted_max(keys) == 8
    assert not view.trusts([0, 1, 2])


def test_positions_validate_names_the_argument_positions_by_default():
    with pytest.raises(TypeError, match=r"^positions must hold integer positions"):
        Positions(pos=torch.arange(3.0)).validate(3)


def test_segment_ids_of_one_row_are_shared_by_the_batch():
    seg = torch.tensor([[0, 0, 1]])
    assert Positions(pos=torch.arange(3), segment_ids=seg).validate(3, batch=4).validated


def test_check_head_dim_refuses_keys_of_another_head_dim():
    from posenc.terms import check_head_dim

    pe = posenc.get_encoding("shaw", dim=8, n_heads=2)  # head_dim 4
    with pytest.raises(ValueError, match=r"built for head_dim=4 \(dim // n_heads\) but q has head_dim 4 and k has 6"):
        check_head_dim(pe, torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 6))
    check_head_dim(pe, torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4))


def test_a_missing_feature_is_named_with_the_encoding():
    call = _call(torch.arange(4), torch.arange(4))
    with pytest.raises(KeyError, match=r"alibi: no feature 'gate' in this call"):
        call.query_features("gate")


# -- surviving mutants of the seed-5 sample (core) --------------------------------------------------------------------


def test_check_int_without_hints_ends_at_what_came_in():
    from posenc._checks import check_int

    with pytest.raises(TypeError, match=r"^n must be an int; got str '3'\.$"):
        check_int("3", "n")
    with pytest.raises(ValueError, match=r"^n must be an int >= 1; got 0\.$"):
        check_int(0, "n", minimum=1)


def test_key_positions_and_their_batch_are_checked_by_name():
    q = torch.randn(2, 2, 3, 4)
    with pytest.raises(TypeError, match=r"^k_pos must hold integer positions"):
        posenc.attention(q, q, q, k_pos=torch.arange(3.0))
    with pytest.raises(ValueError, match=r"q_pos"):
        posenc.attention(q, q, q, q_pos=torch.arange(3).expand(3, 3))  # 3 rows for a batch of 2


def test_a_view_bound_to_expanded_positions_trusts_each_row():
    pos = torch.arange(4).expand(2, 4)  # (B, T) sharing one row: stride 0 on the batch axis
    _, view = _bound_alibi(pos)
    assert view.trusts(pos[1]) and view.trusts(pos[:, 1:3])


def test_default_positions_are_int64_for_an_int32_offset():
    assert posenc.default_positions(2, offset=torch.tensor([1, 2], dtype=torch.int32)).dtype == torch.long


def test_an_encoding_without_options_says_it_accepts_none():
    with pytest.raises(TypeError, match=r"^nope: unknown option\(s\) \['bogus'\]; it accepts none\.$"):
        posenc.get_encoding("nope", dim=8, n_heads=2, bogus=1)


def test_key_positions_stay_trusted_after_the_query_positions_change_in_place():
    pe = posenc.get_encoding("alibi", dim=8, n_heads=2)
    positions = Positions(pos=torch.arange(3)).validate(3)
    keys = torch.cat((torch.tensor([7, 8]), positions.pos))
    view = pe.bind(positions.with_keys(keys, 8))
    positions.pos.add_(0)  # the queries' tensor changed since validation: no longer trusted
    assert not view.trusts(positions.pos) and view.trusts(keys) and view.trusted_max(keys) == 8
