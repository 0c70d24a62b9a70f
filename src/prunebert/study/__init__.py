"""`prunebert study`: a grid of methods x sparsities x stages x tasks (config, plan, run, results, demo)."""

from prunebert.study.config import STAGES, StudyConfig, StudyMethod, StudyTask
from prunebert.study.plan import Cell, PlannedRun, StudyPlan, load_study, study_plan
from prunebert.study.run import run_study

__all__ = [
    "STAGES",
    "Cell",
    "PlannedRun",
    "StudyConfig",
    "StudyMethod",
    "StudyPlan",
    "StudyTask",
    "load_study",
    "run_study",
    "study_plan",
]
