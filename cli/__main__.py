import sys

from redirgate.cli import main

sys.exit(main())
