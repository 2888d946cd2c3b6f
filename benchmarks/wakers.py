"""Single-consumer wakers: notify with nobody waiting, ping-pong, thread wake-ups.

Runs the scenarios of four scripts in turn, into one report; each script also
runs alone, and its docstring says what its rows are. Each scenario runs on
asyncio, asyncio+uvloop and trio:

* ``wakers_idle.py``: notify with nobody waiting (per call; timed inside the
  loop with timeit, the loop's start and end not charged); ``WaitMap.wake`` on
  a missing key is compared with ``dict.pop(key, None)`` (target: at most 4x);
* ``wakers_ping_pong.py``: ping-pong between two tasks of one loop (per round
  trip);
* ``wakers_thread.py``: a wake-up of a parked task from another thread, in
  sequence (per wake-up): the task parks, the thread wakes it, the task
  resumes, and so on;
* ``wakers_burst.py``: bursts: per burst, a thread notifies 1,000 times while
  the consumer waits for the whole burst (per notify: the sample's time over
  all its notifies, the consumer's resumptions included). Also reported: the
  consumer's resumptions per burst, and the calls scheduled into its loop
  (``call_soon_threadsafe`` / ``TrioToken.run_sync_soon``, counted by wrapping
  them during the untimed warm-up).

In the two thread scenarios the thread waits at a gate that opens only once the
task has parked (a loop callback on asyncio, a helper task on trio; the same in
every row of a loop, so it adds the same small cost to each), so that every
wake-up finds the task parked.

The two thread scenarios run twice: in this process (free to use every CPU) and
in a child process pinned to one CPU (``os.sched_setaffinity``; the threads it
starts inherit the pinning), unless ``--no-pinned``. ``--pin CPU`` runs this
process pinned instead.

Every row is sampled in interleaved rounds (A B C A B C ...), each sample in a
fresh event loop after an untimed warm-up, with the cyclic GC collected before
and disabled during the sample.

From the repository root (``python -m benchmarks.wakers`` works too):

    python benchmarks/wakers.py [--rounds 15] [--json FILE] [--quick]
                                [--scenarios idle ping-pong thread burst]
                                [--pin CPU | --no-pinned]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, a script finds the package `benchmarks` at the repository root.
if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import wakers_burst, wakers_idle, wakers_ping_pong, wakers_thread
from benchmarks.common import cli
from benchmarks.common.scenario import Scenario


def scenarios() -> list[Scenario]:
    return [
        wakers_idle.SCENARIO,
        wakers_ping_pong.SCENARIO,
        wakers_thread.SCENARIO,
        wakers_burst.SCENARIO,
    ]


def main() -> None:
    cli.main(__file__, __doc__, scenarios())


if __name__ == "__main__":
    main()
