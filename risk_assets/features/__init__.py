"""Feature engineering: a typed, declarative feature language (``spec``), the starter set of fraud
feature groups (``definitions``) and the exact batch engine that computes them over raw events
(``batch``). The exact semantics every engine must reproduce are in ``spec``'s docstring and
``docs/features.md``.
"""
