"""Region-table throughput against NumPy / torch baselines measured in the same process.

    python benchmarks/bench_region_table.py [--n 1000000] [--repeats 7] [--out benchmarks/out/region_table.json]

record: samples/s into the (sum, sum^2, count) block, 1 thread and 2 threads (two Python threads
recording n samples each into one table at once, from a pool of
persistent threads), against np.bincount(weights=...) and
torch.index_add_ computing the per-region sum alone (one statistic: the strictest baseline), and
np.bincount computing all three statistics. sample: alias-table draws/s against
numpy.random.Generator.choice(K, p=q). Targets (DESIGN/issue 2): record_1t >= 1.0x bincount at every
K; record_2t >= 1.6x record_1t; alias sampling >= 10x Generator.choice.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from aria_hpc.regions import RegionTable
from timing import median_seconds

K_VALUES = (16, 256, 65536)
TARGETS = {"record_1t_vs_bincount": 1.0, "record_2t_vs_1t": 1.6, "sample_vs_choice": 10.0}


def best_rate(fn, items: int, repeats: int) -> float:
    """Items per second of fn, median of `repeats` timed calls after one warm-up."""
    return items / median_seconds(fn, repeats)


def record_threads(pool: ThreadPoolExecutor, table: RegionTable, batches) -> None:
    """Each batch recorded by its own (persistent) thread, all at once."""
    for future in [pool.submit(table.record, ids, values) for ids, values in batches]:
        future.result()


def bench_k(k: int, n: int, repeats: int) -> dict:
    rng = np.random.default_rng(k)
    ids = rng.integers(0, k, n)
    values = rng.random(n)
    ids2, values2 = rng.integers(0, k, n), rng.random(n)
    table = RegionTable(k)
    pool = ThreadPoolExecutor(max_workers=2)  # created once: thread start-up is not record's cost
    t_ids, t_values = torch.from_numpy(ids), torch.from_numpy(values)
    t_out = torch.zeros(k, dtype=torch.float64)

    def numpy_all_three():
        np.bincount(ids, values, minlength=k)
        np.bincount(ids, values * values, minlength=k)
        np.bincount(ids, minlength=k)

    row = {
        "K": k,
        "n": n,
        "record_1t": best_rate(lambda: table.record(ids, values), n, repeats),
        "record_2t": best_rate(lambda: record_threads(pool, table, [(ids, values), (ids2, values2)]), 2 * n, repeats),
        "bincount_sum": best_rate(lambda: np.bincount(ids, values, minlength=k), n, repeats),
        "bincount_3stats": best_rate(numpy_all_three, n, repeats),
        "index_add_sum": best_rate(lambda: t_out.index_add_(0, t_ids, t_values), n, repeats),
    }
    q = rng.random(k) + 0.01
    q /= q.sum()
    table.set_probabilities(q)
    gen = np.random.default_rng(0)
    pool.shutdown()
    row["sample_alias"] = best_rate(lambda: table.sample(n, 12345), n, repeats)
    row["sample_choice"] = best_rate(lambda: gen.choice(k, size=n, p=q), n, repeats)
    row["record_1t_vs_bincount"] = row["record_1t"] / row["bincount_sum"]
    row["record_1t_vs_index_add"] = row["record_1t"] / row["index_add_sum"]
    row["record_2t_vs_1t"] = row["record_2t"] / row["record_1t"]
    row["sample_vs_choice"] = row["sample_alias"] / row["sample_choice"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="benchmarks/out/region_table.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # baselines single-threaded, like record_1t

    rows = [bench_k(k, args.n, args.repeats) for k in K_VALUES]
    m = 1e6
    print(f"{'K':>6} | {'record 1t':>10} {'record 2t':>10} {'bincount':>9} {'bincnt x3':>9} {'index_add':>9} "
          f"| {'1t/binc':>7} {'2t/1t':>6} | {'alias':>8} {'choice':>7} {'ratio':>6}")
    print(f"{'':>6} | {'M samples/s':>10}{'':>41}| {'':>15}| {'M draws/s':>8}")
    for r in rows:
        print(f"{r['K']:>6} | {r['record_1t']/m:>10.0f} {r['record_2t']/m:>10.0f} {r['bincount_sum']/m:>9.0f} "
              f"{r['bincount_3stats']/m:>9.0f} {r['index_add_sum']/m:>9.0f} | {r['record_1t_vs_bincount']:>7.2f} "
              f"{r['record_2t_vs_1t']:>6.2f} | {r['sample_alias']/m:>8.1f} {r['sample_choice']/m:>7.1f} "
              f"{r['sample_vs_choice']:>6.1f}")
    verdicts = {name: all(r[name] >= target for r in rows) for name, target in TARGETS.items()}
    for name, ok in verdicts.items():
        print(f"target {name} >= {TARGETS[name]}: {'met' if ok else 'MISSED'} "
              f"(min {min(r[name] for r in rows):.2f})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(), "n": args.n,
                               "targets": TARGETS, "met": verdicts, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
