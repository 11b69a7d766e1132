"""The soak: millions of random API operations per profile, every byte shadowed.

Skipped unless ``MIGENGINE_SOAK=1``. It drives the API state machine's operations
(``tests/shadow_world.py``) from a seeded generator instead of hypothesis, which
is much faster and needs no shrinking: a failure is reproduced from its episode
seed and operation index.

    MIGENGINE_SOAK=1 MIGENGINE_SOAK_OPS=1000000 python -m pytest -s -q tests/soak -k seed
    python -m tests.soak.test_soak --replay seed 17 4243   # episode seed 17, 4243 ops

Each episode is a fresh machine running ``MIGENGINE_SOAK_EPISODE`` operations
(every 100th a hundred times as many, so a slow leak has time to show; every
fourth with little memory, so allocations fail and faults run out of frames). After
every operation ``m.check()`` passes and the bytes it could have changed equal
the shadow; every ``MIGENGINE_SOAK_FULL_EVERY`` operations all
mapped bytes are compared. At the end of an episode every pin, lock, isolation
and driver page is released, the batches drained and the device evicted, and
every frame the machine started with must be free again or held by a mapping;
then every byte is read back through the CPU. A failing episode is recorded
(seed, operation index, the last operations) and the soak goes on with the next;
the test fails at the end if any episode failed. ``MIGENGINE_SOAK_OUT`` names a
directory for ``soak-<profile>.json``, the record docs/performance.md cites.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections import Counter, deque
from pathlib import Path
from typing import Any

import pytest

import migengine as me
from tests.shadow_world import OPS, Failure, RandomDraw, World

ENV = os.environ
TOTAL = int(float(ENV.get("MIGENGINE_SOAK_OPS", "1000000")))
SEED = int(ENV.get("MIGENGINE_SOAK_SEED", "0"))
EPISODE = int(float(ENV.get("MIGENGINE_SOAK_EPISODE", "2000")))
# Short episodes give many layouts (forks, THPs, mixes of kinds); every 100th runs
# 100 times longer, so a slow leak has time to show on one machine (about 40% of
# the operations run on those).
LONG_EVERY = 100
LONG_FACTOR = 100
FULL_EVERY = int(ENV.get("MIGENGINE_SOAK_FULL_EVERY", "200"))
PROGRESS_EVERY = 100_000

ROOMY = {"ram": 8192, "device": 2048, "max_procs": 5, "max_vmas": 6}
# Little memory, mapped past RAM: allocations fail, faults find no frame, the
# device cannot take everything and eviction cannot bring everything back.
TIGHT = {"ram": 1600, "device": 200, "max_procs": 5, "max_vmas": 6, "max_mapped": 2400}
NAMES = list(OPS)
WEIGHTS = [OPS[n] for n in NAMES]


def episode_world(profile: str, seed: int) -> World:
    return World(profile, **(TIGHT if seed % 4 == 3 else ROOMY))


def run_episode(
    profile: str, seed: int, nops: int, full_every: int = FULL_EVERY, verbose: bool = False
) -> dict[str, Any]:
    """One machine, ``nops`` operations drawn from ``seed``, then the release and
    the frame accounting. Returns what it did, and the failure if any."""
    w = episode_world(profile, seed)
    draw = RandomDraw(seed)
    trail: deque[str] = deque(maxlen=12)
    out: dict[str, Any] = {"seed": seed, "ops": 0, "full_compares": 0, "failure": None}
    i = -1
    try:
        for i in range(nops):
            name = draw.rng.choices(NAMES, WEIGHTS)[0]
            trail.append(name)
            if verbose:
                print(f"op {i}: {name}", flush=True)
            w.step(getattr(w, f"op_{name}"), draw)
            out["ops"] = i + 1
            if full_every and i % full_every == full_every - 1:
                w.verify_all()
                out["full_compares"] += 1
        i = nops  # the end of the episode
        w.verify_all()
        w.quiesce()
        out["frames"] = w.account()
        w.read_everything()
        w.m.check()
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, then reported
        kind = (
            "invariant"
            if isinstance(exc, me.InvariantError)
            else "contract"
            if isinstance(exc, Failure)
            else "exception"
        )
        replay_ops = min(i + 1, nops)  # through the failing op, or the whole episode
        out["failure"] = {
            "kind": kind,
            "op_index": i,
            "op": trail[-1] if trail and i < nops else "end of episode",
            "error": f"{type(exc).__name__}: {exc}",
            "bytes_lost": getattr(exc, "lost", 0),
            "last_ops": list(trail),
            "traceback": traceback.format_exc(limit=6),
            "replay": f"python -m tests.soak.test_soak --replay {profile} {seed} {replay_ops}",
        }
    out["bytes_compared"] = w.bytes_compared
    out["checks"] = w.stats["check"]
    out["stats"] = w.stats
    return out


def soak(profile: str, total: int = TOTAL, seed: int = SEED, log=sys.stdout) -> dict[str, Any]:
    """Episodes of EPISODE operations from seed ``seed`` on until ``total`` ran."""
    t0 = time.perf_counter()
    rec: dict[str, Any] = {
        "profile": profile,
        "ops": 0,
        "episodes": 0,
        "first_seed": seed,
        "episode_ops": EPISODE,
        "longest_episode": 0,
        "full_every": FULL_EVERY,
        "checks": 0,
        "full_compares": 0,
        "bytes_compared": 0,
        "failures": [],
    }
    stats: Counter[str] = Counter()
    next_report = PROGRESS_EVERY
    s = seed
    while rec["ops"] < total:
        length = EPISODE * (LONG_FACTOR if s % LONG_EVERY == LONG_EVERY - 1 else 1)
        ep = run_episode(profile, s, min(length, total - rec["ops"]))
        rec["longest_episode"] = max(rec["longest_episode"], ep["ops"])
        rec["episodes"] += 1
        rec["ops"] += ep["ops"]
        for key in ("checks", "full_compares", "bytes_compared"):
            rec[key] += ep[key]
        stats.update(ep["stats"])
        if ep["failure"] is not None:
            rec["failures"].append({"seed": s, **ep["failure"]})
            print(f"FAIL {profile} seed={s}: {ep['failure']}", file=log, flush=True)
            if ep["ops"] == 0:
                rec["ops"] += 1  # an episode failing at once still moves the soak on
        if rec["ops"] >= next_report or rec["ops"] >= total:
            while next_report <= rec["ops"]:
                next_report += PROGRESS_EVERY
            print(
                f"{profile}: {rec['ops']:,} ops, {rec['episodes']} episodes, "
                f"{rec['bytes_compared']:,} bytes compared, {len(rec['failures'])} failures, "
                f"{time.perf_counter() - t0:.0f} s",
                file=log,
                flush=True,
            )
        s += 1
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    rec["ops_per_s"] = round(rec["ops"] / rec["wall_s"]) if rec["wall_s"] else 0
    rec["kinds"] = dict(Counter(f["kind"] for f in rec["failures"]))
    rec["bytes_lost"] = sum(f["bytes_lost"] for f in rec["failures"])
    rec["outcomes"] = dict(stats.most_common())
    rec["versions"] = {"python": sys.version.split()[0], "migengine": me.__version__}
    return rec


@pytest.mark.skipif(ENV.get("MIGENGINE_SOAK") != "1", reason="the soak runs with MIGENGINE_SOAK=1")
@pytest.mark.parametrize("profile", ["hmm-v25", "seed", "modern"])
def test_soak(profile: str) -> None:
    """MIGENGINE_SOAK_OPS random operations: no crash, no invariant failure, no
    byte lost, no frame leaked."""
    rec = soak(profile)
    summary = {k: v for k, v in rec.items() if k not in ("outcomes", "failures")}
    print(json.dumps(summary, indent=1), flush=True)
    out = ENV.get("MIGENGINE_SOAK_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"soak-{profile}.json").write_text(json.dumps(rec, indent=1) + "\n")
    assert not rec["failures"], json.dumps(rec["failures"][:3], indent=1)


def main(argv: list[str]) -> None:
    """``--replay PROFILE SEED NOPS``: rerun one episode for NOPS operations (then
    its end-of-episode checks), printing each operation and the failure."""
    if len(argv) == 4 and argv[0] == "--replay":
        profile, seed, nops = argv[1], int(argv[2]), int(argv[3])
        ep = run_episode(profile, seed, nops, verbose=True)
        print(json.dumps(ep["failure"], indent=1) if ep["failure"] else "no failure")
        return
    raise SystemExit("usage: python -m tests.soak.test_soak --replay PROFILE SEED NOPS")


if __name__ == "__main__":
    main(sys.argv[1:])
