"""Entry point of ``pulumi up`` run from the repository root (``Pulumi.yaml``: main: stacks/)."""

from __future__ import annotations

import os
import sys

# Pulumi runs this file as a script, not as part of a package: make `stacks` importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stacks.program import main

main()
