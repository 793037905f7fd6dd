"""What a training run reports to its listeners (tracking, tuning), importable without torch."""


class Callback:
    """Hears, on rank 0, each epoch's record, then the run's result or what stopped it; what
    `epoch_end` raises (a pruned trial) stops the run with that epoch's state saved."""

    def epoch_end(self, record: dict[str, float]) -> None:
        pass

    def train_end(self, result) -> None:  # a run_state.TrainResult
        pass

    def train_stop(self, error: BaseException) -> None:
        pass
