import sys

from saescale.cli import main

sys.exit(main())
