"""Helpers shared by the tests of every component (not tests themselves).

``tests/conftest.py`` puts ``tests/`` on ``sys.path`` (pytest's default
"prepend" import mode) and has pytest rewrite the asserts of this package, so a
test module in any folder imports them as ``from support.workers import Worker``.
"""
