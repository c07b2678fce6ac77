"""The HTTP surface: each API's routes, auth, client limits and the running services."""

from pathlib import Path

# The dashboard's files: the repository's static/ folder, shipped in the wheel as
# ``ollamux/static`` beside this package's parent.
STATIC = Path(__file__).resolve().parents[2] / "static"
