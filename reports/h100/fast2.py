import tempfile, time
from dataclasses import replace
from pathlib import Path
from pipeline import config
from pipeline.train import recipe_config, train
P = config.PROCESSED_DIR
with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    train(replace(recipe_config("fast", device="cuda"), max_steps=20), P, Path(tmp) / "w.pt", progress=False, figures_dir=Path(tmp), force=True)
    print("warm", time.perf_counter() - t0, flush=True)
    for epochs in (5, 6):
        for seed in (0, 1, 2):
            r = train(recipe_config("fast", device="cuda", epochs=epochs, seed=seed), P, Path(tmp) / "f.pt", progress=False, figures_dir=Path(tmp), force=True)
            print(f"FAST epochs {epochs} seed {seed} to99 {r.seconds_to_target} best {r.best_accuracy:.4f} final {r.final_accuracy:.4f} train_s {r.train_seconds:.3f} curve {[round(h['val_accuracy'],4) for h in r.history]}", flush=True)
