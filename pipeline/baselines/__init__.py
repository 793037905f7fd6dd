"""The tutorial systems as runnable, tested baselines: `pipeline baselines <name>`.

Each `<name>.py` holds plain functions that return results and write one figure;
`pipeline.cli.baselines` holds the thin typer commands, which import a baseline (and torch)
only when it runs.
"""
