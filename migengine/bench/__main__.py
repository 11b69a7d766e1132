"""``python -m migengine.bench RESULTS.json``: regenerate results.md (no benchmark runs)."""

import sys

from migengine.bench.report import main

sys.exit(main())
