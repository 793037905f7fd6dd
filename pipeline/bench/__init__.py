"""`pipeline bench`: the speed figures, each against a baseline measured in the same run.

`run` measures (`models`, `training`, `end_to_end`, `serve_load`); `report` prints the figures.
"""
