import sys

from pipeline.runtime.allocator import keep_freed_memory

keep_freed_memory()  # before torch allocates anything (pipeline/runtime/allocator.py)

from pipeline.jobs.cli import main  # noqa: E402

sys.exit(main())
