import sys

from kwsd.cli import main

if __name__ == "__main__":  # a spawned decode process imports this module too
    sys.exit(main())
