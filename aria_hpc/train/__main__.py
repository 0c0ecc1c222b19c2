import sys

from aria_hpc.train import main

sys.exit(main())
