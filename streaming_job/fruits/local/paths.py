"""Where the project's bundled sample images and weights are (for the demo and the CLI's defaults).

A module of its own so that ``fruits --help`` can show them without importing the demo.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]
SAMPLE_IMAGES = PROJECT_ROOT / "data" / "fruits-sample"
BUNDLED_WEIGHTS = PROJECT_ROOT / "models" / "mobilenet_v2_1.0_no_top.weights.h5"
DEMO_WORK = PROJECT_ROOT / "work" / "demo"
