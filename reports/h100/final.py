import sys, time
import torch
from pipeline import bench, config
from pipeline.crossval import cross_validate
from pipeline.train import recipe_config

device = torch.device("cuda")
part = sys.argv[1]
if part == "throughput":
    for b in (256, 1024, 2048, 4096):
        print("BEST_NET", bench.bench_best_net(config.PROCESSED_DIR, device, [b], 60), flush=True)
if part == "fast":
    for seed in (0, 1, 2):
        print("FAST", bench.bench_fast_recipe(config.PROCESSED_DIR, device, seed=seed), flush=True)
if part == "cv":
    seeds = [int(s) for s in sys.argv[2].split(",")]
    cross_validate(recipe_config("best", device="cuda"), 5, seeds, config.RAW_DIR,
                   config.MODELS_DIR / "crossval", log=lambda m: print("CV", m, flush=True)
                   if m.startswith("split") else None, progress=False)
