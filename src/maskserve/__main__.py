import sys

from maskserve.cli import main

sys.exit(main())
