"""sparse_ref.metadata: transposes, block fill, the form rule, caching on the pattern."""

import numpy as np
import pytest
from helpers import random_inputs
from hypothesis import given
from hypothesis import strategies as st

import sparse_ref
from sparse_ref import Pattern, blocks, metadata, patterns, testing
from sparse_ref.backends import numba as numba_backend


def _random_pattern(rng, n_q, n_k, heads=1, density=0.4):
    mask = rng.random((heads, n_q, n_k)) < density
    mask[:, 1, :] = False  # a query with no keys
    return Pattern.from_dense(mask if heads > 1 else mask[0])


# ------------------------------------------------------------------------------------ cache
def test_cached_builds_once_per_pattern_and_key():
    builds = []

    def build(value):
        builds.append(value)
        return [value]

    p, other = patterns.causal(16), patterns.causal(16)
    first = metadata.cached(p, ("test", 1), lambda: build("a"))
    assert metadata.cached(p, ("test", 1), lambda: build("b")) is first == ["a"]
    assert metadata.cached(p, ("test", 2), lambda: build("c")) == ["c"]  # another key
    assert metadata.cached(other, ("test", 1), lambda: build("d")) == ["d"]  # another pattern
    assert builds == ["a", "c", "d"]


# ------------------------------------------------------------------------------- transposes
@pytest.mark.parametrize("heads", [1, 3])
def test_csr_transpose_matches_pattern_transpose(rng, heads):
    p = _random_pattern(rng, 17, 23, heads=heads)
    t = metadata.csr_transpose(p)
    want = p.transpose().stacked_csr()
    assert np.array_equal(t.indptr, want.indptr) and np.array_equal(t.indices, want.indices)
    csr = p.stacked_csr()  # perm: transposed position -> CSR position of the same entry
    rows = np.concatenate([np.repeat(np.arange(17), np.diff(ptr)) for ptr in csr.indptr])
    keys = np.concatenate([np.repeat(np.arange(23), np.diff(ptr)) for ptr in t.indptr])
    assert np.array_equal(rows[t.perm], t.indices)
    assert np.array_equal(csr.indices[t.perm], keys)
    assert np.array_equal(np.sort(t.perm), np.arange(len(t.perm)))
    assert not any(a.flags.writeable for a in t)
    assert metadata.csr_transpose(p) is t  # cached on the pattern


def test_transpose_csr_of_an_empty_pattern_and_an_empty_head():
    indptr = np.array([[0, 0, 0], [0, 1, 2]])
    t_indptr, t_indices, perm = metadata.transpose_csr(indptr, np.array([2, 0], np.int32), 3)
    assert t_indptr.tolist() == [[0, 0, 0, 0], [0, 1, 1, 2]]
    assert t_indices.tolist() == [1, 0] and t_indices.dtype == np.int32
    assert perm.tolist() == [1, 0]


def test_block_transpose_lists_each_column_in_block_row_order():
    parts = [
        patterns.global_local(200, 9, 9, [0, 120], block=32).block_form,
        patterns.causal(200, block=32).block_form,
    ]
    pattern = Pattern.from_bsr(blocks.stack(parts))
    bsr = pattern.stacked_bsr()
    t_indptr, t_rows, t_pos = metadata.block_transpose(pattern)
    assert t_indptr.shape == (2, 8) and t_rows.dtype == t_pos.dtype == np.int64
    assert np.array_equal(np.sort(t_pos), np.arange(len(bsr.indices)))
    assert np.array_equal(pattern.to_bsr().block_rows()[t_pos], t_rows)
    for p in range(2):
        for bj in range(7):
            sel = slice(t_indptr[p, bj], t_indptr[p, bj + 1])
            assert (bsr.indices[t_pos[sel]] == bj).all()
            assert (np.diff(t_rows[sel]) > 0).all()
            assert ((t_pos[sel] >= bsr.indptr[p, 0]) & (t_pos[sel] < bsr.indptr[p, -1])).all()


@pytest.mark.parametrize("block", [(32, 32), (16, 48)], ids=str)
def test_block_row_layout_lays_each_block_rows_keys_end_to_end(block):
    parts = [  # 200 keys: a ragged last block column
        patterns.global_local(200, 9, 9, [0, 120], block=block).block_form,
        patterns.causal(200, block=block).block_form,
    ]
    pattern = Pattern.from_bsr(blocks.stack(parts))
    (bq, bk), indptr, indices, _, masks = metadata.blocks(pattern)
    lay = metadata.block_row_layout(pattern)
    for p in range(2):
        for bi in range(indptr.shape[1] - 1):
            a, z = indptr[p, bi], indptr[p, bi + 1]
            widths = [min(bk, 200 - int(bj) * bk) for bj in indices[a:z]]
            assert lay.widths[a:z].tolist() == widths
            assert lay.wcum[a:z].tolist() == [sum(widths[:i]) for i in range(len(widths))]
            assert lay.row_keys[p, bi] == sum(widths)
    assert np.array_equal(lay.masks_t, masks.transpose(0, 2, 1)) and len(masks) > 0
    assert lay.widths.dtype == lay.wcum.dtype == lay.row_keys.dtype == np.int64
    assert all(a.flags.c_contiguous and not a.flags.writeable for a in lay)
    assert metadata.block_row_layout(pattern) is lay  # cached on the pattern


def test_block_row_layout_without_partial_blocks_has_one_empty_mask():
    pattern = patterns.dense(100, 70, block=32)
    assert len(metadata.blocks(pattern).masks) == 0
    lay = metadata.block_row_layout(pattern)
    assert lay.masks_t.shape == (1, 32, 32) and not lay.masks_t.any()
    assert lay.row_keys.tolist() == [[70] * 4]


def test_blocks_refuses_a_pattern_without_a_block_form():
    with pytest.raises(ValueError, match="no block form"):
        metadata.blocks(patterns.causal(8))


# ------------------------------------------------------------------------------- block fill
@given(
    n_q=st.integers(1, 40),
    n_k=st.integers(1, 40),
    heads=st.sampled_from([1, 2]),
    block=st.sampled_from([1, 3, 8, 64]),
    density=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_block_fill_counts_the_stored_blocks(n_q, n_k, heads, block, density, seed):
    mask = np.random.default_rng(seed).random((heads, n_q, n_k)) < density
    p = Pattern.from_dense(mask)
    nbq, nbk = -(-n_q // block), -(-n_k // block)
    padded = np.zeros((heads, nbq * block, nbk * block), dtype=bool)
    padded[:, :n_q, :n_k] = mask
    stored = padded.reshape(heads, nbq, block, nbk, block).any(axis=(2, 4))
    heights = np.minimum(block, n_q - np.arange(nbq) * block)
    widths = np.minimum(block, n_k - np.arange(nbk) * block)
    area = int((stored * np.outer(heights, widths)).sum())
    assert metadata.block_fill(p, block) == (mask.sum() / area if area else 0.0)


@given(
    n_q=st.integers(1, 70),
    n_k=st.integers(1, 70),
    heads=st.sampled_from([1, 3]),
    block=st.sampled_from([1, 5, 16, 64]),
    density=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_derived_block_form_is_to_bsr(n_q, n_k, heads, block, density, seed):
    """The form rule's block form (built by a walk over the rows) equals ``Pattern.to_bsr``."""
    mask = np.random.default_rng(seed).random((heads, n_q, n_k)) < density
    mask[:, : n_q // 2, : n_k // 3] = True  # full blocks too
    p = Pattern.from_dense(mask)
    got = metadata._with_block_form(p, block)
    assert got.block == (block, block) and got == p
    assert got.block_form == p.to_bsr(block)


# ----------------------------------------------------------------------------- the form rule
def test_auto_picks_blocks_for_a_causal_window_4096_at_n_65536():
    """The issue's case: built without ``block=``, its 128-blocks are 97% full."""
    p = patterns.causal_sliding_window(65536, 4096)
    assert p.block is None
    assert metadata.block_fill(p, 128) > 0.95
    assert metadata.auto_block(p) == 128


@pytest.mark.parametrize(
    "build, block",
    [
        (lambda: patterns.causal_sliding_window(2048, 1024), (128, 128)),  # 0.89 full
        (lambda: patterns.causal_sliding_window(1024, 256), (64, 64)),  # 128: 0.67, 64: 0.8
        (lambda: patterns.sliding_window(1024, 40, 40), (64, 64)),  # 64-blocks 0.42 full
        (lambda: patterns.random(1024, 1024, 8, seed=3), None),
        (lambda: patterns.sliding_window(1024, 3, 3), None),  # 64-blocks 0.04 full
        (lambda: patterns.bigbird(512, 32, seed=1), (32, 32)),  # its own block form
    ],
)
def test_kernel_pattern_auto(build, block):
    p = build()
    got = metadata.kernel_pattern(p)
    assert got.block == block
    assert got == p  # the same structure
    assert metadata.kernel_pattern(p) is got  # derived once, cached on p


def test_kernel_pattern_forced_forms():
    window = patterns.causal_sliding_window(256, 64, block=32)
    as_csr = metadata.kernel_pattern(window, "csr")
    assert as_csr.block is None and as_csr == window
    assert metadata.kernel_pattern(window, "block") is window
    rand = patterns.random(256, 256, 4, seed=0)
    assert metadata.kernel_pattern(rand, "block").block == (64, 64)
    assert metadata.kernel_pattern(rand, "csr") is rand
    with pytest.raises(ValueError, match="form must be one of"):
        metadata.kernel_pattern(rand, "bsr")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "build",
    [
        lambda: patterns.causal_sliding_window(600, 200),  # auto: blocks
        lambda: patterns.random(600, 600, 12, seed=5),  # auto: token CSR
    ],
)
def test_every_form_agrees_with_the_oracle_and_repeats_its_bits(rng, dtype, build):
    p = build()
    q, k, v, dout = random_inputs(rng, (1, 2, 600, 24), (1, 1, 600, 24), 16, dtype)
    for form in metadata.FORMS:
        out, lse = sparse_ref.attention(q, k, v, p, return_lse=True, form=form, softcap=4.0)
        testing.assert_close_to_oracle(out, q, k, v, p, lse=lse, softcap=4.0)
        grads = sparse_ref.attention_backward(q, k, v, p, dout, form=form, softcap=4.0)
        testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout, softcap=4.0)
        again = sparse_ref.attention_backward(q, k, v, p, dout, form=form, softcap=4.0)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(grads, again))


@pytest.mark.parametrize("form, kernels", [("auto", "bsr"), ("csr", "csr"), ("block", "bsr")])
def test_attention_runs_the_kernels_of_the_form(rng, monkeypatch, form, kernels):
    calls = []
    for name in ("bsr_forward", "csr_forward", "bsr_backward", "csr_backward"):
        real = getattr(numba_backend, name)
        monkeypatch.setattr(
            numba_backend, name, lambda *a, _n=name, _r=real: calls.append(_n) or _r(*a)
        )
    p = patterns.causal_sliding_window(300, 128)
    q, k, v, dout = random_inputs(rng, (300, 8), (300, 8), 8, np.float32)
    sparse_ref.attention(q, k, v, p, form=form)
    sparse_ref.attention_backward(q, k, v, p, dout, form=form)
    assert calls == [f"{kernels}_forward", f"{kernels}_backward"]


def test_the_oracle_ignores_the_form_and_a_bad_form_is_refused(rng):
    p = patterns.causal_sliding_window(300, 128)
    q, k, v = random_inputs(rng, (300, 8), (300, 8), dout=False)
    a = sparse_ref.attention(q, k, v, p, backend="oracle", form="block")
    assert a.tobytes() == sparse_ref.attention(q, k, v, p, backend="oracle").tobytes()
    with pytest.raises(ValueError, match="form must be one of"):
        sparse_ref.attention(q, k, v, p, form="bsr")
    with pytest.raises(ValueError, match="form must be one of"):
        sparse_ref.attention_backward(q, k, v, p, q, form=None)
