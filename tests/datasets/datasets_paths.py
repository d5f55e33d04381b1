"""Where the shared goldens and real dataset samples live (imported by the dataset tests)."""

from pathlib import Path

SHARED = Path(__file__).resolve().parents[3] / "shared"
if not SHARED.is_dir():  # the checkout may live elsewhere; /work/shared is the documented location
    SHARED = Path("/work/shared")
REFERENCE = SHARED / "reference"
SAMPLES = SHARED / "datasets"
