"""``python -m synapse_nb``: the command line (see :mod:`synapse_nb.pipeline.cli`)."""
from synapse_nb.pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
