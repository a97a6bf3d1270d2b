import sys

from kwsd.cli import main

sys.exit(main())
