"""Interoperability with other sparse-attention systems (each submodule imports its peer lazily).

* :mod:`sparse_ref.interop.deepspeed`: DeepSpeed's block-sparse layout builders
  (``FixedSparsityConfig``, ``VariableSparsityConfig``, ``BigBirdSparsityConfig``,
  ``BSLongformerSparsityConfig``, ``LocalSlidingWindowSparsityConfig``) reimplemented in NumPy,
  equal to DeepSpeed's ``make_layout`` bit for bit, with ``to_pattern``.
"""

__all__: list[str] = []
