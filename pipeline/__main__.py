import sys

from pipeline.jobs.cli import main

sys.exit(main())
