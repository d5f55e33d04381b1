"""Results: the cell records, the SQLite results store and its read API (DataFrames). Used by the harness and
the reports alike; imports neither."""

from ptq3d.results.read import Results, load_results
from ptq3d.results.store import ResultsStore

__all__ = ["Results", "ResultsStore", "load_results"]
