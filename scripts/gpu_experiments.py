"""GPU experiments behind the figures in docs/accuracy.md, through public functions only.

Run on the GPU machine after `pipeline download --zip ... && pipeline prepare`:

    python scripts/gpu_experiments.py throughput            # best net img/s per batch size
    python scripts/gpu_experiments.py fast --seeds 0,1,2    # fast recipe: seconds to 99%
    python scripts/gpu_experiments.py crossval --splits 0,1,2,3,4 --members 5 [--elastic]

Each result is one line starting with THROUGHPUT, FAST or CV, so a log can be grepped. On a
machine without a GPU, `--device cpu --max-steps 5` runs the same code as a smoke test.
"""

import argparse
import time
from dataclasses import replace

from pipeline import config
from pipeline.bench.models import bench_best_net
from pipeline.bench.training import bench_fast_recipe
from pipeline.common.device import resolve_device
from pipeline.experiments.crossval import cross_validate, format_summary
from pipeline.training.recipes import recipe_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["throughput", "fast", "crossval"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-sizes", default="256,1024,2048,4096")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--splits", default="0,1,2,3,4")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--elastic", action="store_true", help="crossval with --elastic")
    parser.add_argument("--max-steps", type=int, default=None, help="smoke runs only")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.part == "throughput":
        for batch in map(int, args.batch_sizes.split(",")):
            rows = bench_best_net(config.PROCESSED_DIR, device, [batch], steps=60)
            print("THROUGHPUT", rows, flush=True)
    elif args.part == "fast":
        for seed in map(int, args.seeds.split(",")):
            result = bench_fast_recipe(config.PROCESSED_DIR, device, seed=seed)
            print("FAST", result, flush=True)
    else:
        cfg = recipe_config("best", device=args.device, max_steps=args.max_steps)
        cfg = replace(cfg, elastic=args.elastic)
        start = time.perf_counter()
        result = cross_validate(
            cfg,
            args.members,
            [int(s) for s in args.splits.split(",")],
            log=lambda line: print("CV", line, flush=True) if line.startswith("split") else None,
            progress=False,
        )
        print("CV", format_summary(result).replace("\n", " | "), flush=True)
        print("CV total seconds", round(time.perf_counter() - start), flush=True)


if __name__ == "__main__":
    main()
