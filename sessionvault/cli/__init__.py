"""The ``sessionvault`` command line: one package, one module per area (``main`` lists them).

Command modules hold only command-line work (options, output); what they run is library API in
the area packages. This is the top of the import graph: nothing below imports from here.
"""

from __future__ import annotations

from sessionvault.cli.common import STACK_DOWN
from sessionvault.cli.main import main

__all__ = ["STACK_DOWN", "main"]
