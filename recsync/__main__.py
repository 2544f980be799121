import sys

from recsync.daemon import main

sys.exit(main())
