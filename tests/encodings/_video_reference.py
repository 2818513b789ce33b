"""The VideoRoPE / HoPE authors' index and rotation code, re-derived for the tests (neither repo is installable).

``t_scale_rope_index`` follows ``get_t_scale_rope_index`` of ``Wiselnn570/VideoRoPE``
(``videorope-transformer/modeling_videorope.py``), which is also ``get_dynamic_rope_index`` of ``hrlics/HoPE``
(``modeling_hope.py``) with the scale drawn per grid; ``apply_m_modify`` follows
``apply_m_modify_multimodal_rotary_pos_emb`` (VideoRoPE) and, with ``zero_time=True``,
``apply_hybrid_multimodal_rotary_pos_emb`` (HoPE); ``qwen2vl_cos_sin`` is the Qwen2-VL rotary module both repos use
(``Qwen2VLRotaryEmbedding.forward``). Token by token, as the authors wrote them, in float64 unless told otherwise.
"""

from __future__ import annotations

import torch

VISION_START, VIDEO, IMAGE = 1, 2, 3  # token ids of the tiny test vocabulary; text tokens are >= 4


def tokens_for(segments, merge: int = 2) -> tuple[list[int], list[tuple[int, int, int]]]:
    """Token ids and raw grid_thw (before the spatial merge) of text runs and merged ``(t, h, w)`` grids; each grid
    follows a vision-start token, which is the last token of the text run before it (so runs before grids are >= 1)."""
    ids, grids = [], []
    for n, seg in enumerate(segments):
        if isinstance(seg, int):
            before_grid = n + 1 < len(segments) and not isinstance(segments[n + 1], int)
            ids += [4 + (i % 5) for i in range(seg - before_grid)] + ([VISION_START] if before_grid else [])
        else:
            t, h, w = seg
            ids += [VIDEO if t > 1 else IMAGE] * (t * h * w)
            grids.append((t, h * merge, w * merge))
    return ids, grids


def t_scale_rope_index(input_ids: list[int], grids: list[tuple[int, int, int]], scale_factors: list[float],
                       merge: int = 2) -> tuple[torch.Tensor, float]:
    """``(3, T)`` position ids and ``rope_delta`` of ``get_t_scale_rope_index`` (one sequence, no padding).

    ``grids`` in order of appearance, images and videos alike (the authors keep two lists and pick whichever token
    comes first; one list in order is the same); ``scale_factors`` one per grid.
    """
    input_tokens = list(input_ids)
    vision_start_indices = [i for i, x in enumerate(input_tokens) if x == VISION_START]
    vision_tokens = [input_tokens[i + 1] for i in vision_start_indices]
    n_grids = sum(1 for v in vision_tokens if v in (IMAGE, VIDEO))
    llm_pos_ids_list = []
    st = 0
    for g in range(n_grids):
        ed = min(input_tokens.index(tok, st) for tok in (IMAGE, VIDEO) if tok in input_tokens[st:])
        t, h, w = grids[g]
        llm_grid_t, llm_grid_h, llm_grid_w = t, h // merge, w // merge
        text_len = ed - st
        st_idx = llm_pos_ids_list[-1][0].max() + 1 if llm_pos_ids_list else 0
        llm_pos_ids_list.append(torch.arange(text_len).view(1, -1).expand(3, -1).double() + st_idx)
        t_index = torch.arange(llm_grid_t).view(-1, 1).expand(-1, llm_grid_h * llm_grid_w).flatten()
        h_index = torch.arange(llm_grid_h).view(1, -1, 1).expand(llm_grid_t, -1, llm_grid_w).flatten() - \
            (llm_grid_h - 1) // 2
        w_index = torch.arange(llm_grid_w).view(1, 1, -1).expand(llm_grid_t, llm_grid_h, -1).flatten() - \
            (llm_grid_w - 1) // 2
        t_index = t_index * scale_factors[g]
        t_index = t_index + text_len + st_idx
        h_index = h_index + t_index
        w_index = w_index + t_index
        llm_pos_ids_list.append(torch.stack([t_index, h_index, w_index]).double())
        st = ed + llm_grid_t * llm_grid_h * llm_grid_w
    if st < len(input_tokens):
        st_idx = llm_pos_ids_list[-1][0].max() + 1 if llm_pos_ids_list else 0
        text_len = len(input_tokens) - st
        llm_pos_ids_list.append(torch.arange(text_len).view(1, -1).expand(3, -1).double() + st_idx)
    llm_positions = torch.cat(llm_pos_ids_list, dim=1).reshape(3, -1)
    return llm_positions, float(llm_positions[0].max() + 1 - len(input_tokens))


def qwen2vl_cos_sin(position_ids: torch.Tensor, head_dim: int, base: float,
                    dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """``Qwen2VLRotaryEmbedding.forward``: ``(3, B, T)`` positions -> cos, sin ``(3, B, T, head_dim)``."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype) / head_dim))
    freqs = position_ids[..., None].to(dtype) * inv_freq  # (3, B, T, F)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_m_modify(q, k, cos, sin, mrope_section, *, zero_time: bool = False, unsqueeze_dim: int = 1):
    """The authors' reordering of cos/sin ``(3, B, T, D)`` and rotation of q, k ``(B, H, T, D)``."""
    mrope_section = [mrope_section[0], mrope_section[1] + mrope_section[2]]
    mrope_section = mrope_section * 2
    mrope_section = mrope_section[::-1]
    index = 0
    result_cos, result_sin = [], []
    for i, section in enumerate(mrope_section):
        if i % 2 == 0:
            for j in range(section):
                row = 1 if j % 2 == 0 else 2
                result_cos.append(cos[row, ..., index: index + 1])
                result_sin.append(sin[row, ..., index: index + 1])
                index += 1
        else:
            if zero_time:  # HoPE: temporal -> NoPE
                result_cos.append(torch.ones_like(cos[0, ..., index:index + section]))
                result_sin.append(torch.zeros_like(cos[0, ..., index:index + section]))
            else:
                result_cos.append(cos[0, ..., index:index + section])
                result_sin.append(sin[0, ..., index:index + section])
            index += section
    cos = torch.cat(result_cos, dim=-1).unsqueeze(dim=unsqueeze_dim)
    sin = torch.cat(result_sin, dim=-1).unsqueeze(dim=unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def paper_rotation(x: torch.Tensor, coords: torch.Tensor, pair_axes: list[int], base: float) -> torch.Tensor:
    """The paper formula written naively: pair ``(c, c + F)`` of ``x`` ``(T, D)`` turned by ``coords[t, a_c] *
    base^(-2c / D)`` (no turn where ``a_c = -1``), in float64 loops."""
    t_len, d = x.shape
    f = d // 2
    out = x.double().clone()
    for t in range(t_len):
        for c in range(f):
            a = pair_axes[c]
            angle = 0.0 if a < 0 else float(coords[t, a]) * base ** (-2.0 * c / d)
            cs, sn = torch.tensor(angle, dtype=torch.float64).cos(), torch.tensor(angle, dtype=torch.float64).sin()
            x1, x2 = x[t, c].double(), x[t, c + f].double()
            out[t, c], out[t, c + f] = x1 * cs - x2 * sn, x2 * cs + x1 * sn
    return out
