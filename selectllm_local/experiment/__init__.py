"""The paper's comparison as one resumable command: methods x budgets x seeds.

``config.py`` reads and checks the experiment file, ``runner.py`` runs the cells (and resumes
them), ``stages.py`` runs one cell (select -> fine-tune -> evaluate), ``results.py`` writes the
table and the plot.
"""

from selectllm_local.experiment.cells import Cell
from selectllm_local.experiment.config import ExperimentConfig, load_experiment_config
from selectllm_local.experiment.runner import ExperimentOutcome, run_experiment

__all__ = [
    "Cell",
    "ExperimentConfig",
    "ExperimentOutcome",
    "load_experiment_config",
    "run_experiment",
]
