"""DeepSpeed layout builders: hand-derived layouts, token patterns, validation, and bit-for-bit
equality with DeepSpeed's own ``sparsity_config.py`` when it is importable.

DeepSpeed's module is located through an installed ``deepspeed`` package (without importing the
package, whose ``__init__`` needs many extras) or the environment variable
``SPARSE_REF_DEEPSPEED_SPARSITY_CONFIG`` (a path to ``sparsity_config.py``, e.g. from the
DeepSpeed 0.17.6 sdist; later releases removed sparse attention). It needs torch.
"""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparse_ref.interop import deepspeed as ds

# ------------------------------------------------------------------------------ DeepSpeed itself


def _load_deepspeed_config() -> tuple[ModuleType | None, str]:
    path = os.environ.get("SPARSE_REF_DEEPSPEED_SPARSITY_CONFIG")
    if not path:
        try:
            spec = importlib.util.find_spec("deepspeed")
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            return None, "deepspeed is not installed (set SPARSE_REF_DEEPSPEED_SPARSITY_CONFIG)"
        path = str(
            Path(next(iter(spec.submodule_search_locations)))
            / "ops"
            / "sparse_attention"
            / "sparsity_config.py"
        )
    if not Path(path).is_file():
        return None, f"no DeepSpeed sparsity_config.py at {path} (removed after DeepSpeed 0.17)"
    if importlib.util.find_spec("torch") is None:
        return None, "DeepSpeed's sparsity_config.py needs torch"
    spec = importlib.util.spec_from_file_location("_deepspeed_sparsity_config", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, ""


DS, DS_REASON = _load_deepspeed_config()
needs_deepspeed = pytest.mark.skipif(DS is None, reason=DS_REASON)

CLASSES = [
    "FixedSparsityConfig",
    "VariableSparsityConfig",
    "BigBirdSparsityConfig",
    "BSLongformerSparsityConfig",
    "LocalSlidingWindowSparsityConfig",
    "DenseSparsityConfig",
]


def _global_lists(draw: st.DrawFn) -> dict:
    starts = draw(st.lists(st.integers(-3, 12), min_size=0, max_size=3))
    if draw(st.booleans()) and starts:
        ends = [s + draw(st.integers(1, 4)) for s in starts]
        return {"global_block_indices": starts, "global_block_end_indices": ends}
    return {"global_block_indices": starts}


@st.composite
def configs(draw: st.DrawFn, name: str) -> tuple[dict, int]:
    """Constructor kwargs within sparse-ref's accepted domain, and a seq_len."""
    kw: dict = {"num_heads": draw(st.integers(1, 3)), "block": draw(st.integers(1, 3))}
    attention = draw(st.sampled_from(["unidirectional", "bidirectional"]))
    if name != "LocalSlidingWindowSparsityConfig" and name != "DenseSparsityConfig":
        kw["different_layout_per_head"] = draw(st.booleans())
    if name == "FixedSparsityConfig":
        L = draw(st.integers(1, 6))
        G = draw(st.sampled_from([g for g in range(1, L + 1) if L % g == 0]))
        P = draw(st.integers(1, L // G)) if kw["different_layout_per_head"] else 1
        kw |= dict(num_local_blocks=L, num_global_blocks=G, num_different_global_patterns=P)
        kw |= dict(attention=attention)
        kw["horizontal_global_attention"] = attention == "bidirectional" and draw(st.booleans())
    elif name == "VariableSparsityConfig":
        kw["num_random_blocks"] = draw(st.integers(0, 3))
        kw["local_window_blocks"] = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
        kw |= _global_lists(draw)
        kw["attention"] = attention
        kw["horizontal_global_attention"] = attention == "bidirectional" and draw(st.booleans())
    elif name == "BigBirdSparsityConfig":
        kw["num_random_blocks"] = draw(st.integers(0, 1 if attention == "unidirectional" else 3))
        kw["num_sliding_window_blocks"] = draw(st.integers(0, 5))
        kw["num_global_blocks"] = draw(st.integers(0, 3))
        kw["attention"] = attention
    elif name == "BSLongformerSparsityConfig":
        kw["num_sliding_window_blocks"] = draw(st.integers(0, 5))
        kw |= _global_lists(draw)
        kw["attention"] = attention
    elif name == "LocalSlidingWindowSparsityConfig":
        kw["num_sliding_window_blocks"] = draw(st.integers(0, 5))
        kw["attention"] = attention
    nb = draw(st.integers(0, 13))
    return kw, nb * kw["block"]


def _deepspeed_layout(name: str, kw: dict, seq_len: int, seed: int) -> np.ndarray | Exception:
    assert DS is not None
    random.seed(seed)
    try:
        return getattr(DS, name)(**kw).make_layout(seq_len).numpy()
    except Exception as exc:  # noqa: BLE001 - DeepSpeed fails in several ways; we compare
        return exc


@needs_deepspeed
@pytest.mark.parametrize("name", CLASSES)
@given(data=st.data())
def test_equals_deepspeed_bit_for_bit(name: str, data: st.DataObject) -> None:
    kw, seq_len = data.draw(configs(name))
    seed = data.draw(st.integers(0, 2**32 - 1))
    expected = _deepspeed_layout(name, kw, seq_len, seed)
    if isinstance(expected, Exception):  # DeepSpeed refuses: so must we, with a ValueError
        with pytest.raises(ValueError):
            getattr(ds, name)(**kw, seed=seed).make_layout(seq_len)
        return
    ours = getattr(ds, name)(**kw, seed=seed).make_layout(seq_len)
    assert ours.dtype == np.int64 and expected.dtype == np.int64
    np.testing.assert_array_equal(ours, expected)
    random.seed(seed)  # seed=None follows the global random state, exactly as DeepSpeed does
    np.testing.assert_array_equal(getattr(ds, name)(**kw).make_layout(seq_len), expected)


@needs_deepspeed
@pytest.mark.parametrize(
    "name, kw, seq_len",
    [  # DeepSpeed's defaults and typical published settings
        ("FixedSparsityConfig", {"num_heads": 4}, 1024),
        ("FixedSparsityConfig", {"num_heads": 4, "attention": "unidirectional"}, 1024),
        (
            "FixedSparsityConfig",
            dict(num_heads=4, different_layout_per_head=True, num_different_global_patterns=4),
            1040,
        ),
        ("VariableSparsityConfig", {"num_heads": 2, "num_random_blocks": 2}, 512),
        ("BigBirdSparsityConfig", {"num_heads": 2, "different_layout_per_head": True}, 512),
        ("BSLongformerSparsityConfig", {"num_heads": 2, "global_block_indices": [0, 5]}, 512),
        ("LocalSlidingWindowSparsityConfig", {"num_heads": 2}, 512),
    ],
)
def test_equals_deepspeed_defaults(name: str, kw: dict, seq_len: int) -> None:
    expected = _deepspeed_layout(name, kw, seq_len, 1234)
    assert not isinstance(expected, Exception)
    np.testing.assert_array_equal(getattr(ds, name)(**kw, seed=1234).make_layout(seq_len), expected)


# ------------------------------------------------------------------------- hand-derived layouts
def _m(rows: str) -> list[list[int]]:
    return [[int(c) for c in r] for r in rows.split()]


HAND = [
    # Fixed: windows [0,2) [2,4); global = last block of each window (offset L - G = 1).
    (ds.FixedSparsityConfig(1, block=1, num_local_blocks=2), 4, _m("1101 1101 0111 0111")),
    (
        ds.FixedSparsityConfig(1, block=1, num_local_blocks=2, attention="unidirectional"),
        4,
        _m("1000 1100 0110 0111"),
    ),
    # short last window [4,5): its global block is min(4 + 1, 5 - 1) = 4.
    (
        ds.FixedSparsityConfig(1, block=1, num_local_blocks=2),
        5,
        _m("11011 11011 01111 01111 01011"),
    ),
    (
        ds.FixedSparsityConfig(1, block=1, num_local_blocks=2, horizontal_global_attention=True),
        4,
        _m("1101 1111 0111 1111"),
    ),
    # windows [0,1) [1,3) then the last size repeats: [3,5); global column 0.
    (
        ds.VariableSparsityConfig(1, block=1, local_window_blocks=[1, 2]),
        5,
        _m("10000 11100 11100 10011 10011"),
    ),
    # global index -1 (Python indexing) with horizontal attention
    (
        ds.VariableSparsityConfig(
            1,
            block=1,
            local_window_blocks=[1],
            global_block_indices=[-1],
            horizontal_global_attention=True,
        ),
        4,
        _m("1001 0101 0011 1111"),
    ),
    (ds.BigBirdSparsityConfig(1, block=1, num_random_blocks=0), 4, _m("1111 1110 1111 1011")),
    (
        ds.BigBirdSparsityConfig(1, block=1, num_random_blocks=0, attention="unidirectional"),
        4,
        _m("1000 1100 1110 1011"),
    ),
    (
        ds.BSLongformerSparsityConfig(
            1,
            block=1,
            num_sliding_window_blocks=1,
            global_block_indices=[1],
            global_block_end_indices=[3],
            attention="unidirectional",
        ),
        5,
        _m("10000 11000 11100 01110 01101"),
    ),
    (ds.LocalSlidingWindowSparsityConfig(1, block=1), 4, _m("1000 1100 0110 0011")),
    (
        ds.LocalSlidingWindowSparsityConfig(
            1, block=1, num_sliding_window_blocks=5, attention="bidirectional"
        ),
        5,
        _m("11100 11110 11111 01111 00111"),
    ),
]


@pytest.mark.parametrize("cfg, seq_len, expected", HAND, ids=[repr(h[0]) for h in HAND])
def test_hand_derived_layouts(cfg: ds.SparsityConfig, seq_len: int, expected: list) -> None:
    layout = cfg.make_layout(seq_len)
    assert layout.dtype == np.int64 and layout.shape == (1, len(expected), len(expected))
    assert layout[0].tolist() == expected


def test_fixed_global_pattern_per_head() -> None:
    cfg = ds.FixedSparsityConfig(
        2, block=1, num_local_blocks=2, different_layout_per_head=True,
        num_different_global_patterns=2,
    )  # fmt: skip
    layout = cfg.make_layout(4)
    assert layout[0].tolist() == _m("1101 1101 0111 0111")
    assert layout[1].tolist() == _m("1110 1110 1011 1011")  # head 1: first block of each window


def test_heads_share_layout_unless_asked() -> None:
    same = ds.BigBirdSparsityConfig(3, block=2, num_random_blocks=2, seed=0).make_layout(32)
    assert (same == same[0]).all()
    diff = ds.BigBirdSparsityConfig(
        3, block=2, num_random_blocks=2, different_layout_per_head=True, seed=0
    ).make_layout(32)
    assert not (diff == diff[0]).all()


def test_random_blocks_seeded_and_global_state() -> None:
    cfg = ds.VariableSparsityConfig(2, block=1, num_random_blocks=2, local_window_blocks=[1])
    random.seed(7)
    a = cfg.make_layout(16)
    random.seed(7)
    b = cfg.make_layout(16)
    np.testing.assert_array_equal(a, b)
    seeded = ds.VariableSparsityConfig(
        2, block=1, num_random_blocks=2, local_window_blocks=[1], seed=7
    )
    np.testing.assert_array_equal(seeded.make_layout(16), a)
    np.testing.assert_array_equal(seeded.make_layout(16), a)  # same every call
    state = random.getstate()
    seeded.make_layout(16)
    assert random.getstate() == state  # a seeded config leaves the global state alone
    # each row: 2 random blocks on top of the diagonal window and global column 0
    assert ((a[0] == 1).sum(axis=1) >= 2).all()


# --------------------------------------------------------------------------------- to_pattern
@pytest.mark.parametrize(
    "cfg",
    [
        ds.FixedSparsityConfig(2, block=3, num_local_blocks=2),
        ds.BigBirdSparsityConfig(2, block=2, different_layout_per_head=True, seed=3),
        ds.BSLongformerSparsityConfig(1, block=4, attention="unidirectional"),
        ds.LocalSlidingWindowSparsityConfig(2, block=2),
    ],
    ids=repr,
)
def test_to_pattern_expands_blocks(cfg: ds.SparsityConfig) -> None:
    seq_len = 6 * cfg.block
    layout = cfg.make_layout(seq_len).astype(bool)
    p = cfg.to_pattern(seq_len)
    assert p.shape == (seq_len, seq_len)
    assert p.num_heads == (cfg.num_heads if cfg.different_layout_per_head else 1)
    i = np.arange(seq_len)[:, None] // cfg.block
    j = np.arange(seq_len)[None, :] // cfg.block
    for h in range(p.num_heads):
        np.testing.assert_array_equal(p.head(h).to_dense(), layout[h][i, j])


def test_to_pattern_round_trips_through_build() -> None:
    from sparse_ref import patterns

    if "block_sparse" not in patterns.available():
        pytest.skip("the block_sparse family (sparse_ref/patterns/block.py) is not registered yet")
    p = ds.BigBirdSparsityConfig(2, block=4, different_layout_per_head=True, seed=1).to_pattern(32)
    assert p.family == "block_sparse" and p.block == (4, 4)
    assert patterns.build(p.family, **p.params) == p


# --------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "make, exc, name",
    [
        (lambda: ds.FixedSparsityConfig(0), ValueError, "num_heads"),
        (lambda: ds.FixedSparsityConfig(1, block=2.0), TypeError, "block"),
        (lambda: ds.FixedSparsityConfig(1, num_local_blocks=4, num_global_blocks=3), ValueError,
         "num_global_blocks"),
        (lambda: ds.FixedSparsityConfig(1, attention="causal"), ValueError, "attention"),
        (lambda: ds.FixedSparsityConfig(1, attention="unidirectional",
                                        horizontal_global_attention=True), ValueError,
         "horizontal_global_attention"),
        (lambda: ds.FixedSparsityConfig(1, num_different_global_patterns=2), ValueError,
         "num_different_global_patterns"),
        (lambda: ds.FixedSparsityConfig(1, different_layout_per_head=True,
                                        num_different_global_patterns=5), ValueError,
         "num_different_global_patterns"),
        (lambda: ds.VariableSparsityConfig(1, local_window_blocks=[]), ValueError,
         "local_window_blocks"),
        (lambda: ds.VariableSparsityConfig(1, local_window_blocks=[2, 0]), ValueError,
         "local_window_blocks"),
        (lambda: ds.VariableSparsityConfig(1, global_block_indices=[0, 2],
                                           global_block_end_indices=[1]), ValueError,
         "global_block_end_indices"),
        (lambda: ds.VariableSparsityConfig(1, global_block_indices=[3],
                                           global_block_end_indices=[3]), ValueError,
         "global_block_end_indices"),
        (lambda: ds.BigBirdSparsityConfig(1, num_random_blocks=-1), ValueError,
         "num_random_blocks"),
        (lambda: ds.BigBirdSparsityConfig(1, num_random_blocks=2, attention="unidirectional"),
         ValueError, "num_random_blocks"),
        (lambda: ds.BSLongformerSparsityConfig(1, different_layout_per_head=1), TypeError,
         "different_layout_per_head"),
        (lambda: ds.LocalSlidingWindowSparsityConfig(1, seed=1.5), TypeError, "seed"),
        (lambda: ds.LocalSlidingWindowSparsityConfig(1, block=4).make_layout(10), ValueError,
         "seq_len"),
        (lambda: ds.LocalSlidingWindowSparsityConfig(1, block=4).make_layout(8), ValueError,
         "num_sliding_window_blocks"),
        (lambda: ds.BigBirdSparsityConfig(1, block=4, num_random_blocks=3).make_layout(8),
         ValueError, "num_random_blocks"),
        (lambda: ds.BSLongformerSparsityConfig(1, block=1, global_block_indices=[-9])
         .make_layout(4), ValueError, "global_block_indices"),
    ],
)  # fmt: skip
def test_validation_names_parameter(make, exc, name) -> None:  # noqa: ANN001
    with pytest.raises(exc, match=name):
        make()
