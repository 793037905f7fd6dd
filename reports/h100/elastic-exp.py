"""Paired with the best recipe's 5-split crossval (reports/h100/crossval-*.log): same split seeds."""
import sys, time
from dataclasses import replace
from pipeline import config
from pipeline.crossval import cross_validate
from pipeline.train import recipe_config

variant = sys.argv[1]
seeds = [int(s) for s in sys.argv[2].split(",")]
members = int(sys.argv[3])
cfg = recipe_config("best", device="cuda")
if variant == "elastic":
    cfg = replace(cfg, elastic=True)
elif variant == "epochs60":
    cfg = replace(cfg, epochs=60)
print("CFG", cfg, flush=True)
t = time.perf_counter()
cross_validate(cfg, members, seeds, config.RAW_DIR, config.MODELS_DIR / "crossval",
               log=lambda m: print("CV", m, flush=True) if m.startswith("split") else None,
               progress=False)
print("TOTAL", time.perf_counter() - t, flush=True)
