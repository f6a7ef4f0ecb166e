"""Runs the GPU check: ``bench/gpu_check OUT [--wheels KIT] [--cpu] [--scale gpu]``."""

import sys
from pathlib import Path

# The benchmark's folder, so the package and its neighbours (harness, flops, workloads, ...)
# import alike whether it runs as ``python bench/gpucheck`` or is imported from bench/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpucheck.cli import main

sys.exit(main())
