"""N structured mutations of legitimate ``.pjz`` files through the decoder, with the figures
the hardening issue asks for: exceptions other than CorruptFileError, the most CPU one input
took, and the process's peak RSS.

    python fuzz/run_mutations.py 100000 --seed 0
"""

from __future__ import annotations

import argparse
import collections
import random
import resource
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pjz_mutations  # noqa: E402

from penjing.codec import CorruptFileError, loads  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("n", type=int)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    seeds = pjz_mutations.seed_files()
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rng = random.Random(args.seed)
    outcomes: collections.Counter = collections.Counter()
    others: collections.Counter = collections.Counter()
    slowest, slowest_input, biggest = 0.0, b"", 0
    wall = time.perf_counter()
    for i in range(args.n):
        blob = pjz_mutations.mutate(rng.choice(seeds), rng)
        biggest = max(biggest, len(blob))
        t0 = time.process_time()
        try:
            loads(blob)
            outcomes["loaded"] += 1
        except CorruptFileError:
            outcomes["CorruptFileError"] += 1
        except Exception as exc:  # what this run is looking for
            key = f"{type(exc).__name__}: {str(exc)[:200]}"
            if key not in others:
                traceback.print_exc()
                Path(f"crash-{i}.pjz").write_bytes(blob)
            others[key] += 1
            outcomes["other exception"] += 1
        cpu = time.process_time() - t0
        if cpu > slowest:
            slowest, slowest_input = cpu, blob
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{args.n} structured mutations (seed {args.seed}) of {len(seeds)} legitimate files, "
          f"inputs up to {biggest} bytes, {time.perf_counter() - wall:.0f} s wall")
    for k, v in outcomes.most_common():
        print(f"  {k}: {v}")
    for k, v in others.most_common():
        print(f"  !! {v} x {k}")
    print(f"max CPU per input: {1e3 * slowest:.1f} ms ({len(slowest_input)}-byte input)")
    print(f"peak RSS: {rss_peak / 1024:.0f} MB (after imports and seeds: {rss_start / 1024:.0f} MB)")
    return 1 if others else 0


if __name__ == "__main__":
    sys.exit(main())
