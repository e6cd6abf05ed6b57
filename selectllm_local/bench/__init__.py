"""The selection benchmark, as a subsystem: options, model, workload run, stage split, dry run, output.

Why a package: these modules change together and nothing outside the CLI and ``benchmarks/`` uses
them. ``config`` parses and validates options before anything heavy is imported; ``model`` builds or
reads the model to measure; ``run`` measures each setting against the machine's matmul peak
(``hardware``); ``stages`` times one whole ``select`` stage by stage; ``dry`` estimates a
selection's cost without loading a model; ``output`` writes the JSON, the table and the plot.
Import the submodule you need (``from selectllm_local.bench import run``); nothing is re-exported.
"""
