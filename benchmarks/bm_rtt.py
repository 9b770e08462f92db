"""``calculate_sum.delay(100).get()`` round trips: the SQLite result backend against ``rpc://``.

The variants take turns (sqlite, rpc, sqlite, rpc, ...), each turn with fresh workers, so a
machine that is slower for a while slows both and the first variant is not favoured.
"""

from __future__ import annotations

import time

from harness import Bench, JSONDict, Target, progress, ratio, spread, timing

NAME = "rtt"
FULL = {"calls": 200, "warmup": 10, "turns": 3}
QUICK = {"calls": 40, "warmup": 5, "turns": 1}
VARIANTS = {"sqlite": {}, "rpc": {"BATCHAPP_RESULT_BACKEND": "rpc://"}}


def measure(bench: Bench, size: JSONDict) -> JSONDict:
    collected: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for turn in range(size["turns"]):
        for name, settings in VARIANTS.items():
            progress(f"rtt: {name} result backend, turn {turn + 1}, {size['calls']} calls")
            variant = bench.variant(f"rtt-{name}-{turn}", **settings)
            with variant.workers(concurrency=2):
                out = variant.client(__name__, calls=size["calls"], warmup=size["warmup"])
            collected[name] += out["samples_ms"]
    samples = {name: spread(values) for name, values in collected.items()}
    medians = {name: s["median"] for name, s in samples.items()}
    return {
        "rtt_ms": medians,
        "ratios": {"rtt_sqlite_over_rpc": ratio(medians["sqlite"], medians["rpc"])},
        "spread": {"rtt_ms": samples},
    }


def client(params: JSONDict) -> JSONDict:
    """calculate_sum.delay(100).get() with get()'s default arguments, timed call by call."""
    from batchapp.tasks import calculate_sum

    for _ in range(params["warmup"]):
        calculate_sum.delay(100).get()
    samples = []
    for _ in range(params["calls"]):
        start = time.perf_counter()
        value = calculate_sum.delay(100).get()
        samples.append((time.perf_counter() - start) * 1000)
        if value != 5050:
            raise RuntimeError(f"calculate_sum(100) returned {value!r}")
    return {"samples_ms": samples}


def targets(f: JSONDict, quick: bool) -> list[Target]:
    rtt = f["rtt_ms"]
    row = Target(
        "rtt delay(100).get()",
        f"sqlite {rtt['sqlite']:.1f} ms",
        f"rpc {rtt['rpc']:.1f} ms",
        f["ratios"]["rtt_sqlite_over_rpc"],
    )
    return [timing(row, "<=", 1.5, quick)]
