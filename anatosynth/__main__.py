import sys

from anatosynth.cli import main

sys.exit(main())
