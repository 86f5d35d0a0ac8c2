"""Entry point for `python -m pipeline`: the CLI of pipeline/commands/ plus the flow commands (study, serve).

The one module of the package that imports the flows layer: it is the program's entry point (nothing imports
it), which composes pipeline.cli with flows/commands.py; every importable module keeps to
maskformer_core <- pipeline <- flows (tests/test_layers.py).
"""
import sys

from flows import commands as flow_commands
from pipeline.cli import main

sys.exit(main(extra_modules=(flow_commands,)))
