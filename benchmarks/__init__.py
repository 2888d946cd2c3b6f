"""The benchmark scripts, one scenario or one family of scenarios each.

Each runs as ``python benchmarks/NAME.py`` (or ``python -m benchmarks.NAME``)
from the repository root, and imports what the scripts share from
:mod:`benchmarks.common`, and another script's rows as ``benchmarks.NAME``.
``python3 dev.py bench`` runs them all.
"""
