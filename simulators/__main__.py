"""``python -m simulators``: see simulators/run.py."""
import sys

from simulators.run import main

sys.exit(main())
