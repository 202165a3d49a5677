"""Merge verification and export, as a library that ``peftlab-merge`` and ``merge_after`` call."""

from peftlab.export.merge import VerificationError, check_mergeable, folder_mb, merge_run, summary
from peftlab.export.verify import Tolerance, compare, tolerance

__all__ = ["VerificationError", "check_mergeable", "folder_mb", "merge_run", "summary", "Tolerance", "compare",
           "tolerance"]
