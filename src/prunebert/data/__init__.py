"""Datasets: labelled tasks (built-in, local files, hub) and unlabelled text for masked-LM training."""

from __future__ import annotations

from prunebert.data.hub import GLUE_TASKS
from prunebert.data.tasks import TaskData, load_task, tokenize_task
from prunebert.data.text import SeededMLMCollator, build_mlm_datasets, load_text, mask_tokens, split_documents
from prunebert.data.wikitext import strip_wiki_markup

__all__ = [
    "GLUE_TASKS",
    "SeededMLMCollator",
    "TaskData",
    "build_mlm_datasets",
    "load_task",
    "load_text",
    "mask_tokens",
    "split_documents",
    "strip_wiki_markup",
    "tokenize_task",
]
