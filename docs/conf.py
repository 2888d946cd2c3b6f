"""Sphinx configuration for anyio-waitmap."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio_waitmap

project = "anyio-waitmap"
author = "The anyio-waitmap developers"
copyright = "the anyio-waitmap developers"
release = "0.1.0.dev0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "myst_parser",
]

nitpicky = True
# Type variables of generic classes have no page of their own.
nitpick_ignore = [
    ("py:class", name)
    for name in (
        "K",
        "V",
        "T",
        "D",
        "_T",
        "anyio_waitmap._waitmap.K",
        "anyio_waitmap._waitmap.V",
        "anyio_waitmap._waitmap.D",
        "anyio_waitmap._expectation.K",
        "anyio_waitmap._expectation.V",
        "anyio_waitmap._registry.K",
        "anyio_waitmap._registry.V",
        "anyio_waitmap._outcomes.V",
        "anyio_waitmap._sink.T",
        "anyio_waitmap._wakers.T",
        "anyio_waitmap.lowlevel._T",
        "anyio_waitmap._parking.T",
        "anyio_waitmap.redis._map.V",
    )
]

# The inventories are kept in the repository (see _inventories/build.py), so the
# build needs no network and the links still point at the real pages.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", "_inventories/python.inv"),
    "anyio": ("https://anyio.readthedocs.io/en/stable", "_inventories/anyio.inv"),
    "trio": ("https://trio.readthedocs.io/en/stable", "_inventories/trio.inv"),
    "coredis": ("https://coredis.readthedocs.io/en/stable", "_inventories/coredis.inv"),
}

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# Files whose name starts with "_" are fragments that pages include
# (``.. include:: _redis_comparison.rst``), not pages of their own.
exclude_patterns = ["_build", "_*.rst"]
html_theme = "alabaster"
html_static_path: list[str] = []  # images are referenced from _static directly

doctest_global_setup = "import anyio\nimport anyio_waitmap"
assert anyio_waitmap.__name__ == "anyio_waitmap"
# The changelog page has its own title; the included file's sections start at ##.
suppress_warnings = ["myst.header"]
