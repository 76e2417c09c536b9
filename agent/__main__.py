"""`python -m agent`: the same as the lepton-agent console script."""

import sys

from agent.main import main

sys.exit(main())
