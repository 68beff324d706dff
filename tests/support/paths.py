"""Where the checkout's files are, for tests that read what is committed beside the code."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
