import sys

from recsync.daemon.main import main

sys.exit(main())
