"""`pipeline bench`: the speed figures, each with a baseline measured in the same run.

- `models`: per model, training images/s of our step (through `train.train_one_epoch`) against
  the tutorial's loop, and prediction images/s; the best recipe's net with augmentation.
- `training`: seconds of training until the fast recipe passes 99%; one process against two
  under torchrun.
- `end_to_end`: `pipeline prepare`, `train` and `predict` as processes against the tutorial's
  single script, each command's time split into its phases (`timings`).
- `loadtest` over `live_server`: a bounded load test of `pipeline serve` on loopback.
- `run`: `BenchOptions` -> `run_bench` -> `BenchReport`; `report` formats it.

Nothing is imported here: the stages import `pipeline.common.timings`, which must stay light.
"""
