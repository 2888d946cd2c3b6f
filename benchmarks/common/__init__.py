"""What the benchmark scripts share.

* :mod:`~benchmarks.common.timing`: how one sample is timed, and how rows are
  printed; the machine and the package source that were measured.
* :mod:`~benchmarks.common.floor`: the least a thread-safe keyed hand-over with
  WaitMap's guarantees does, written out by hand (the "floor" rows).
"""
