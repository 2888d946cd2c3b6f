"""What the benchmark scripts share.

* :mod:`~benchmarks.common.timing`: how one sample is timed, and how rows are
  printed; the machine and the package source that were measured.
* :mod:`~benchmarks.common.floor`: the least a thread-safe keyed hand-over with
  WaitMap's guarantees does, written out by hand (the "floor" rows).

And for ``wakers.py`` and the scripts of its scenarios (``wakers_*.py``):

* :mod:`~benchmarks.common.scenario`: a scenario's rows per event loop, how they
  are sampled and printed, and what they report besides their time;
* :mod:`~benchmarks.common.threads`: a task woken from another thread, and the
  gate that makes every wake-up find it parked;
* :mod:`~benchmarks.common.pinning`: a process pinned to one CPU, and a script
  run again in a child process so pinned;
* :mod:`~benchmarks.common.cli`: their command line.
"""
