import sys

from loadtests.experiments.runner import main

sys.exit(main())
