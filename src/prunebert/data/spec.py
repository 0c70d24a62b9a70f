"""Which labelled data a stage reads and how it is tokenised: the task section shared by every stage."""

from __future__ import annotations

from typing import Any, ClassVar

import datasets
from pydantic import Field

from prunebert.data import TaskData, load_task, tokenize_task
from prunebert.data.qa import QAColumns
from prunebert.data.qa_features import qa_features
from prunebert.data.tasks import TaskType
from prunebert.recipes import StrictModel

__all__ = ["QAConfig", "TaskSpec"]


class QAConfig(StrictModel):
    """Extractive QA: the source columns, the context windows, and how answer spans are chosen."""

    question_column: str = Field("question", description="column holding the question")
    context_column: str = Field("context", description="column holding the context (the answer is in it)")
    answers_column: str = Field(
        "answers", description="column of SQuAD-style answers {text: [...], answer_start: [...]}"
    )
    answer_text_column: str = Field("answer_text", description="flat files: column of the answer text")
    answer_start_column: str = Field(
        "answer_start", description="flat files: column of the answer's character offset in the context"
    )
    doc_stride: int | None = Field(
        None,
        ge=1,
        description="tokens shared by consecutive windows of a long context (default: 1/3 of them)",
    )
    max_answer_length: int = Field(30, ge=1, description="longest predicted answer, in tokens")
    n_best: int = Field(20, ge=1, description="start and end candidates per window when choosing a span")

    def columns(self) -> QAColumns:
        """The source columns."""
        return QAColumns(
            self.question_column,
            self.context_column,
            self.answers_column,
            self.answer_text_column,
            self.answer_start_column,
        )


class TaskSpec(StrictModel):
    """Which labelled data a stage reads and how it is tokenised."""

    task: str = Field(
        "rotten-tomatoes", description="built-in task, hub name (glue/sst2) or local csv/tsv/jsonl"
    )
    text_column: str = Field("text", description="column holding the (first) text")
    text_pair_column: str | None = Field(None, description="column holding the second text of a pair task")
    label_column: str = Field("label", description="column holding the label")
    max_seq_length: int = Field(
        128, ge=8, le=512, description="tokens per example (longer are truncated; QA: per window)"
    )
    task_type: TaskType = Field(
        "auto", description="classification, regression or qa; auto infers it from the data"
    )
    qa: QAConfig | None = Field(None, description="extractive QA columns and windows (omit for defaults)")

    recorded_if_set: ClassVar[tuple[str, ...]] = ("task_type", "qa")

    def load(self, seed: int, max_train_examples: int | None = None) -> TaskData:
        """The task this spec names, split with `seed` (train optionally subsampled)."""
        return load_task(
            self.task,
            text_column=self.text_column,
            text_pair_column=self.text_pair_column,
            label_column=self.label_column,
            seed=seed,
            max_train_examples=max_train_examples,
            task_type=self.task_type,
            qa_columns=(self.qa or QAConfig()).columns(),
        )

    def features(self, task: TaskData, tokenizer: Any) -> dict[str, datasets.Dataset]:
        """Model inputs of every split: one example per row, or a QA example's context windows."""
        if task.kind != "qa":
            return tokenize_task(task, tokenizer, self.max_seq_length)
        stride = (self.qa or QAConfig()).doc_stride or self.max_seq_length // 3
        return {
            name: qa_features(split, tokenizer, self.max_seq_length, stride)
            for name, split in task.splits().items()
        }
