"""Determinism, storage equivalence, non-finite inputs and fuzzing of the Numba kernels (issue 10).

What other files already cover, and is not repeated here:

- 1 vs 2 Numba threads and repeated runs: the CSR forward kernel on raw arrays (float32, both
  schedules; ``test_kernels_csr_forward.py``), the BSR forward through ``attention``
  (``test_kernels_bsr_forward.py``) and the CSR backward (``test_kernels_csr_backward.py``);
- non-finite values against hand-derived expectations (``test_kernels_*_forward.py``) and one NaN
  query through ``attention``/``attention_backward`` (``test_api.py``,
  ``test_kernels_csr_backward.py``);
- hypothesis: the CSR forward kernel on raw CSR arrays and the backward on ``from_dense`` masks.

Added here, through the public API and for both storage forms (token CSR and block form):

1. thread counts 1 and 2 and repeated calls, forward and backward, float32 and float64, with GQA
   and a softcap: bitwise identical;
2. the same pattern stored the same way but built differently (``from_dense``, ``from_csr`` with
   unsorted or duplicated input, scipy input, ``from_predicate``; ``with_block_form``, the
   catalog's ``block=``, ``from_bsr`` of a ``BlockSparse`` or of a scipy BSR array,
   ``from_block_layout``), one shared head vs the same head stacked per query head, and one batch
   element computed alone vs inside a batch: bitwise identical, because the kernels' operations
   depend only on the canonical storage and the shapes;
3. ``check_finite=False``: NaN and infinities (in q, k, v, dout; on allowed and masked keys; in rows
   without keys; +inf and all -inf scores; with and without softcap) come out exactly where the
   float64 oracle has them, forward (out, lse) and backward (dq, dk, dv);
4. hypothesis: ``attention`` vs the oracle (DESIGN §9 rule) over ``from_dense`` random masks,
   shapes, GQA, dtypes, scale, softcap and both forms with random (ragged) block sizes: the
   profile's examples in ``make test`` (25, derandomized) and 400 more in a test marked ``slow``
   (derandomized too, unless ``HYPOTHESIS_PROFILE=slow`` makes both random for hunting).

Where CSR and BSR storage of the same pattern do *not* agree bitwise, by design: the CSR kernels
sum a row's keys in chunks of one 128-key tile with fixed reduction trees (and pick a tiled or a
row-by-row schedule for the whole call), while the BSR kernels process runs of adjacent stored
blocks of up to ``TILE_KEYS`` keys as GEMMs whose shapes follow the block size. The two orders
differ, so the forms agree only within the tolerance rule; for the same reason the block form at
two different block sizes is not bitwise identical either. Both are checked here against the
oracle, not against each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from helpers import random_inputs
from hypothesis import given, settings
from hypothesis import strategies as st

import sparse_ref
from sparse_ref import Pattern, patterns, testing


def _same_bits(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> bool:
    return all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))


def _form(p: Pattern) -> str:
    """The kernels of the storage the test built (``form="auto"`` could move token CSR to blocks)."""
    return "csr" if p.block is None else "block"


def _run(q: Any, k: Any, v: Any, p: Pattern, dout: Any, **kw: Any) -> tuple[np.ndarray, ...]:
    """``(out, lse, dq, dk, dv)`` on the pattern's own storage form."""
    out, lse = sparse_ref.attention(q, k, v, p, return_lse=True, form=_form(p), **kw)
    return (out, lse, *sparse_ref.attention_backward(q, k, v, p, dout, form=_form(p), **kw))


# ------------------------------------------------------------------------- 1. thread counts
def _window(n: int) -> Pattern:
    return patterns.causal_sliding_window(n, 90)


def _scattered(n: int) -> Pattern:
    return Pattern.from_dense(np.random.default_rng(11).random((n, n)) < 0.08)


FORMS: dict[str, Callable[[int], Pattern]] = {
    "csr-runs": _window,  # CSR kernels, tiled schedule
    "csr-scattered": _scattered,  # CSR kernels, row-by-row schedule
    "bsr-full-blocks": lambda n: Pattern.from_block_layout(
        np.random.default_rng(12).random((-(-n // 32),) * 2) < 0.3, 32, n_q=n, n_k=n
    ),
    "bsr-partial-blocks": lambda n: _window(n).with_block_form(48),
    "bsr-scattered": lambda n: _scattered(n).with_block_form((16, 24)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("form", list(FORMS))
def test_bitwise_identical_for_one_and_two_threads_and_repeated_calls(
    form: str, dtype: Any
) -> None:
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba has a single thread here: cannot compare thread counts")
    n = 333  # several row blocks and key tiles, ragged at the end
    p = FORMS[form](n)
    q, k, v, dout = random_inputs(np.random.default_rng(1), (2, 4, n, 16), (2, 2, n, 16), 8, dtype)
    before = numba.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 2, 1):
            numba.set_num_threads(threads)
            runs.append(_run(q, k, v, p, dout, softcap=4.0))
    finally:
        numba.set_num_threads(before)
    for other in runs[1:]:
        assert _same_bits(runs[0], other)
    testing.assert_close_to_oracle(runs[0][0], q, k, v, p, lse=runs[0][1], softcap=4.0)


# ------------------------------------------------------------------ 2. storage equivalence
def _token_csr_variants(mask: np.ndarray) -> dict[str, Pattern]:
    """The pattern of ``mask`` built five ways; all end in the same canonical token CSR."""
    n_q, n_k = mask.shape
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n_q):  # each row's keys shuffled, and its first key repeated
        keys = rng.permutation(np.flatnonzero(mask[i]))
        rows.append(np.concatenate([keys, keys[:1]]))
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    r, c = np.nonzero(mask)
    coo = sp.coo_array(  # duplicates again: scipy keeps them until canonicalised
        (np.ones(len(r) + 5, dtype=bool), (np.concatenate([r, r[:5]]), np.concatenate([c, c[:5]]))),
        shape=(n_q, n_k),
    )
    return {
        "from_dense": Pattern.from_dense(mask),
        "from_csr_unsorted_duplicates": Pattern.from_csr(
            (indptr, np.concatenate(rows), (n_q, n_k)), sort=True
        ),
        "from_csr_scipy_coo": Pattern.from_csr(coo),
        "from_predicate": Pattern.from_predicate(lambda i, j: mask[i, j], n_q, n_k, tile=7),
        "union_with_empty": Pattern.from_dense(mask) | Pattern.from_csr(sp.csr_array((n_q, n_k))),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_token_csr_built_any_way_gives_the_same_bits(dtype: Any) -> None:
    rng = np.random.default_rng(4)
    mask = rng.random((70, 90)) < 0.25
    mask |= np.tri(70, 90, 20, dtype=bool) & ~np.tri(70, 90, 5, dtype=bool)
    variants = _token_csr_variants(mask)
    q, k, v, dout = random_inputs(rng, (1, 2, 70, 8), (1, 1, 90, 8), 8, dtype)
    want = _run(q, k, v, variants["from_dense"], dout)
    for name, p in variants.items():
        assert p.block is None and p == variants["from_dense"], name
        assert _same_bits(want, _run(q, k, v, p, dout)), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_block_form_built_any_way_gives_the_same_bits(dtype: Any) -> None:
    n, block = 150, (32, 16)
    token = patterns.causal_sliding_window(n, 40)
    variants = {
        "with_block_form": token.with_block_form(block),
        "catalog_block": patterns.causal_sliding_window(n, 40, block=block),
        "from_bsr_blocksparse": Pattern.from_bsr(
            patterns.causal_sliding_window(n, 40, block=block).block_form
        ),
        "from_bsr_of_to_bsr": Pattern.from_bsr(token.to_bsr(block)),
        "from_bsr_scipy": Pattern.from_bsr(token.to_bsr(block).to_scipy(), shape=(n, n)),
    }
    layout = np.random.default_rng(5).random((5, 10)) < 0.4
    tokens = np.kron(layout, np.ones(block, dtype=bool))  # (160, 160): clip to the shape
    tokens[n:] = False
    tokens[:, n:] = False
    by_layout = {
        "from_block_layout": Pattern.from_block_layout(layout, block, n_q=n, n_k=n),
        "block_sparse": patterns.block_sparse(layout, block, n_q=n, n_k=n),
        "from_bsr_scipy_layout": Pattern.from_bsr(
            sp.bsr_array(tokens, blocksize=block),
            shape=(n, n),
        ),
    }
    q, k, v, dout = random_inputs(np.random.default_rng(6), (2, 2, n, 8), (2, 1, n, 8), 4, dtype)
    for group in (variants, by_layout):
        first = next(iter(group.values()))
        want = _run(q, k, v, first, dout)
        for name, p in group.items():
            assert p.block == block and p.block_form == first.block_form, name
            assert _same_bits(want, _run(q, k, v, p, dout)), name


@pytest.mark.parametrize("form", ["csr", "bsr"])
def test_one_shared_head_equals_that_head_stacked_per_query_head(form: str) -> None:
    n = 200
    p = patterns.sinks(n, 4, 50)
    p = p if form == "csr" else p.with_block_form(32)
    q, k, v, dout = random_inputs(
        np.random.default_rng(7), (2, 4, n, 8), (2, 2, n, 8), 8, np.float32
    )
    shared = _run(q, k, v, p, dout, softcap=3.0)
    stacked = _run(q, k, v, Pattern.stack([p] * 4), dout, softcap=3.0)
    assert _same_bits(shared, stacked)


@pytest.mark.parametrize("form", ["csr", "bsr"])
def test_a_batch_element_alone_equals_the_same_element_in_a_batch(form: str) -> None:
    n = 180
    p = _scattered(n) | patterns.causal_sliding_window(n, 30)
    p = p if form == "csr" else p.with_block_form(24)
    q, k, v, dout = random_inputs(
        np.random.default_rng(8), (3, 2, n, 8), (3, 1, n, 8), 8, np.float64
    )
    whole = _run(q, k, v, p, dout)
    alone = _run(q[1:2], k[1:2], v[1:2], p, dout[1:2])
    assert _same_bits(tuple(x[1:2] for x in whole), alone)


# ------------------------------------------------------------------ 3. non-finite values
def _mask(n_q: int, n_k: int) -> np.ndarray:
    mask = np.random.default_rng(9).random((n_q, n_k)) < 0.3
    mask |= np.tri(n_q, n_k, 0, dtype=bool) & ~np.tri(n_q, n_k, -6, dtype=bool)  # runs too
    mask[EMPTY_ROW] = False
    mask[:, LONELY_KEY] = False
    mask[ROW, LONELY_KEY] = True  # a key that only row ROW attends
    return mask


ROW, EMPTY_ROW, KEY, LONELY_KEY = 17, 5, 9, 30


def _set(name: str, index: Any, value: float) -> Callable[[dict[str, np.ndarray]], None]:
    def apply(arrays: dict[str, np.ndarray]) -> None:
        arrays[name][(0, 0, *index)] = value

    return apply


def _all_scores_minus_inf(arrays: dict[str, np.ndarray]) -> None:
    k = arrays["k"]
    k[0, 0, :, 0] = -np.abs(k[0, 0, :, 0]) - 0.5
    arrays["q"][0, 0, ROW] = 0.0
    arrays["q"][0, 0, ROW, 0] = np.inf


def _one_score_plus_inf(arrays: dict[str, np.ndarray]) -> None:
    arrays["k"][0, 0, KEY] = 0.0
    arrays["k"][0, 0, KEY, 0] = np.inf  # +-inf or NaN scores for every row that attends KEY


INJECTIONS: dict[str, Callable[[dict[str, np.ndarray]], None]] = {
    "nan-in-q": _set("q", (ROW, 1), np.nan),
    "inf-in-q": _set("q", (ROW, 2), np.inf),
    "nan-in-k": _set("k", (KEY, 0), np.nan),
    "minus-inf-in-k": _set("k", (KEY, 3), -np.inf),
    "nan-in-v": _set("v", (KEY, 1), np.nan),
    "inf-in-v": _set("v", (KEY, 2), np.inf),
    "minus-inf-in-v-of-lonely-key": _set("v", (LONELY_KEY, 0), -np.inf),
    "inf-in-k-of-lonely-key": _set("k", (LONELY_KEY, 1), np.inf),
    "nan-in-dout": _set("dout", (ROW, 3), np.nan),
    "inf-in-q-of-row-without-keys": _set("q", (EMPTY_ROW, 0), np.inf),
    "nan-in-dout-of-row-without-keys": _set("dout", (EMPTY_ROW, 1), np.nan),
    "all-scores-minus-inf": _all_scores_minus_inf,
    "plus-inf-score": _one_score_plus_inf,
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the oracle's NumPy meets NaN and inf
@pytest.mark.parametrize("softcap", [None, 2.0], ids=["plain", "softcap"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("form", ["csr", "bsr"])
@pytest.mark.parametrize("injection", list(INJECTIONS))
def test_non_finite_values_land_exactly_where_the_oracle_puts_them(
    injection: str, form: str, dtype: Any, softcap: float | None
) -> None:
    """``check_finite=False``: NaN/±inf positions of out, lse, dq, dk, dv equal the oracle's and
    the finite entries pass the tolerance rule (``testing.assert_matches``)."""
    n_q, n_k = 40, 44
    p = Pattern.from_dense(_mask(n_q, n_k))
    p = p if form == "csr" else p.with_block_form(16)
    q, k, v, dout = random_inputs(
        np.random.default_rng(10), (1, 2, n_q, 8), (1, 1, n_k, 8), 6, dtype
    )
    arrays = {"q": q, "k": k, "v": v, "dout": dout}
    INJECTIONS[injection](arrays)
    kw = {"softcap": softcap, "check_finite": False, "form": _form(p)}
    out, lse = sparse_ref.attention(q, k, v, p, return_lse=True, **kw)
    testing.assert_close_to_oracle(out, q, k, v, p, lse=lse, softcap=softcap)
    grads = sparse_ref.attention_backward(q, k, v, p, dout, **kw)
    testing.assert_grads_close_to_oracle(grads, q, k, v, p, dout, softcap=softcap)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_the_injections_reach_the_outputs() -> None:
    """Guard for the table above: each injection makes the oracle's results non-finite somewhere
    (or, for rows without keys and all -inf scores, leaves its special values), so none of the
    cases is vacuous."""
    p = Pattern.from_dense(_mask(40, 44))
    for name, inject in INJECTIONS.items():
        q, k, v, dout = random_inputs(
            np.random.default_rng(10), (1, 2, 40, 8), (1, 1, 44, 8), 6, np.float64
        )
        arrays = {"q": q, "k": k, "v": v, "dout": dout}
        inject(arrays)
        out, lse = sparse_ref.attention(
            q, k, v, p, return_lse=True, backend="oracle", check_finite=False
        )
        grads = sparse_ref.attention_backward(
            q, k, v, p, dout, backend="oracle", check_finite=False
        )
        finite = (
            all(np.isfinite(x).all() for x in (out, *grads)) and np.isfinite(lse[..., ROW]).all()
        )
        if name.endswith("row-without-keys"):
            assert np.isneginf(lse[0, 0, EMPTY_ROW]) and np.all(grads[0][0, 0, EMPTY_ROW] == 0), (
                name
            )
            assert finite, name  # a row without keys never touches its q or dout
        elif name == "all-scores-minus-inf":
            assert np.isneginf(lse[0, 0, ROW]) and np.all(out[0, 0, ROW] == 0), name
        else:
            assert not finite, name


# ------------------------------------------------------------------------------ 4. fuzzing
@st.composite
def _fuzz_cases(draw: Any) -> dict[str, Any]:
    kv_heads = draw(st.sampled_from([1, 2]))
    return {
        "heads": kv_heads * draw(st.sampled_from([1, 2])),
        "kv_heads": kv_heads,
        "n_q": draw(st.integers(1, 48)),
        "n_k": draw(st.integers(1, 48)),
        "d": draw(st.sampled_from([1, 2, 5, 16])),
        "d_v": draw(st.sampled_from([1, 3, 8])),
        "per_head": draw(st.booleans()),
        "density": draw(st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0])),
        "dtype": draw(st.sampled_from([np.float32, np.float64])),
        # scale as a multiple of 1/sqrt(d): score magnitudes like the default's, signs flipped too
        "scale_factor": draw(st.one_of(st.none(), st.floats(-2.0, 2.0, allow_subnormal=False))),
        "softcap": draw(st.one_of(st.none(), st.floats(0.25, 50.0))),
        "block": draw(st.one_of(st.none(), st.tuples(st.integers(1, 20), st.integers(1, 20)))),
        "std": draw(st.sampled_from([0.5, 1.0, 2.0])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _fuzz(case: dict[str, Any]) -> None:
    """``attention`` against the oracle under the §9 rule, 16 batch elements per mask.

    The rule compares maxima, so on small tensors it is a statistical test with a false-alarm
    rate of a few per thousand (``docs/conventions.md``; measured again for this strategy: an
    independent straightforward NumPy implementation fails about as often as the kernels). The
    batch of 16 lowers that rate; the derandomized profiles below pass, and cases that the random
    ``HYPOTHESIS_PROFILE=slow`` profile reports are worth reading but expected at that rate.
    """
    rng = np.random.default_rng(case["seed"])
    P = case["heads"] if case["per_head"] else 1
    mask = rng.random((P, case["n_q"], case["n_k"])) < case["density"]
    p = Pattern.from_dense(mask if P > 1 else mask[0])
    if case["block"] is not None:
        p = p.with_block_form(case["block"])
    shape = (16, case["heads"], case["n_q"], case["d"])
    q, k, v, _ = random_inputs(
        rng, shape, (16, case["kv_heads"], case["n_k"], case["d"]), case["d_v"], case["dtype"]
    )
    q, k = (x * np.asarray(case["std"], dtype=case["dtype"]) for x in (q, k))
    f = case["scale_factor"]
    kw = {"scale": None if f is None else f / np.sqrt(case["d"]), "softcap": case["softcap"]}
    out, lse = sparse_ref.attention(q, k, v, p, return_lse=True, form=_form(p), **kw)
    assert out.dtype == case["dtype"] and out.shape == (*shape[:3], case["d_v"])
    testing.assert_close_to_oracle(out, q, k, v, p, lse=lse, **kw)


@given(_fuzz_cases())
def test_fuzz_attention_against_the_oracle(case: dict[str, Any]) -> None:
    _fuzz(case)


@pytest.mark.slow
@settings(max_examples=400)  # derandomized under the default profile, random under ``slow``
@given(_fuzz_cases())
def test_fuzz_attention_against_the_oracle_long(case: dict[str, Any]) -> None:
    _fuzz(case)
