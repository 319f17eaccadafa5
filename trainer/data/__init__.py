"""Prompt data: rows, readers for JSONL/Parquet and public layouts, templates, the arithmetic task."""

from forkrl.trainer.data.readers import DataStats, read_rows
from forkrl.trainer.data.schema import PromptRow

__all__ = ["DataStats", "PromptRow", "read_rows"]
