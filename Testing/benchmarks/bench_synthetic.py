"""Benchmark: procedural scene rendering speed per organ (plain script, not collected by pytest).

Run: ``python Testing/benchmarks/bench_synthetic.py [--size 256x320] [--frames 8] [--repeat 1]``. Prints a
Markdown table of scene build time, exact-geometry time and full-frame (geometry + shading + effects) time in ms per
frame, as wall-clock and as process CPU time (the CPU column is less sensitive to other jobs on a shared machine).
``--repeat K`` times each pass K times and keeps the fastest (less noise from other jobs); the default 1 is a single
pass. Pin to one core for single-core numbers: ``OMP_NUM_THREADS=1 taskset -c 1 python ...``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from SurgicalDepthTrainingLib.synthetic import ORGANS, SceneConfig, SceneGenerator


def _timed(run, frames: int, repeat: int) -> tuple[float, float]:
    """Fastest of ``repeat`` passes of ``run()``: (wall, CPU) seconds per frame."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        best = min(best, ((time.perf_counter() - wall) / frames, (time.process_time() - cpu) / frames))
    return best


def bench(organ: str, height: int, width: int, frames: int, seed: int, repeat: int = 1) -> dict:
    t0 = time.perf_counter()
    gen = SceneGenerator(SceneConfig(organ=organ, height=height, width=width, seed=seed))
    build = time.perf_counter() - t0
    poses = gen.trajectory(frames + 1)
    gen.render(poses[0])  # warm-up
    geo_wall, geo_cpu = _timed(lambda: [gen.geometry(pose) for pose in poses[1:]], frames, repeat)
    valid = []
    frame_wall, frame_cpu = _timed(lambda: valid.extend(gen.render(pose, index=i).valid.mean()
                                                        for i, pose in enumerate(poses[1:], 1)), frames, repeat)
    return {"organ": organ, "build_ms": 1e3 * build, "geometry_ms": 1e3 * geo_wall, "geometry_cpu_ms": 1e3 * geo_cpu,
            "frame_ms": 1e3 * frame_wall, "frame_cpu_ms": 1e3 * frame_cpu, "valid": float(np.mean(valid))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256x320", help="HxW (default 256x320)")
    parser.add_argument("--frames", type=int, default=8, help="frames timed per organ (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="scene seed")
    parser.add_argument("--repeat", type=int, default=1, help="passes per measurement, the fastest is kept")
    args = parser.parse_args()
    height, width = (int(x) for x in args.size.lower().split("x"))
    print(f"synthetic rendering, {height}x{width}, {args.frames} frames per organ, best of {args.repeat}\n")
    print("| organ | scene build ms | geometry ms/frame | geometry CPU ms | frame ms | frame CPU ms | valid |")
    print("|---|---|---|---|---|---|---|")
    for organ in ORGANS:
        r = bench(organ, height, width, args.frames, args.seed, args.repeat)
        print(f"| {organ} | {r['build_ms']:.0f} | {r['geometry_ms']:.1f} | {r['geometry_cpu_ms']:.1f} | "
              f"{r['frame_ms']:.1f} | {r['frame_cpu_ms']:.1f} | {r['valid']:.3f} |")


if __name__ == "__main__":
    main()
