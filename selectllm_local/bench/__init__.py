"""The selection benchmark, as a subsystem: model, workload run, peak, stage split, dry run, output.

Why a package: these modules change together and nothing outside the CLI and ``benchmarks/`` uses
them. The settings and presets are declared once in ``config/bench.py`` (parsed and validated
before anything heavy is imported); ``config`` here adds the JSON's fixed keys and resolves the
``auto`` engine of a setting; ``model`` builds or reads the model to measure; ``run`` measures
each setting against the machine's matmul peak (``peak``, over ``hardware``); ``stages`` times one
whole ``select`` stage by stage; ``dry`` estimates a selection's cost without loading a model;
``output`` writes the JSON, the table and the plot; ``command`` is ``selectllm bench`` as one call.
Import the submodule you need (``from selectllm_local.bench import run``); nothing is re-exported.
"""
