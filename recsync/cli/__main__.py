import sys

from recsync.cli import main

sys.exit(main())
