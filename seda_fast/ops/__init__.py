"""The fused ops: one module per kernel module of the same name (``seda_fast/ops/X.py`` <->
``kernels/X.py``), each with its ``torch.library`` custom op(s), fake, autograd formula and the glue
that feeds the launcher from a model. ``runtime`` (can the kernels run here, the kernel package,
the compute dtype) and ``weights`` (cached weight-only tables, autocast copies, flat weight lists)
serve them all."""
