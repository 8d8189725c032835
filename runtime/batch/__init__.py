"""Batch screening of upload folders into a crash-safe SQLite ledger, with HTML/CSV reports.

`edgescreen batch IN_DIR --bundle B --db results.sqlite`: see pipeline (the run),
ledger (the SQLite file), discover/sniff/dicom (inputs), patients (worse-eye grouping),
report (HTML, CSV, pseudonymisation) and cli (the subcommand).
"""

from __future__ import annotations

from .ledger import Ledger, LedgerError
from .pipeline import BatchOptions, RunStats, run_batch

__all__ = ["BatchOptions", "Ledger", "LedgerError", "RunStats", "run_batch"]
