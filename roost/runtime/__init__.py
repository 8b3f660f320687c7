"""A run's life in the terminal: supervisor.py (the `roost` console script: the CLI in a session of
its own), stopping.py (Ctrl-C and SIGTERM), runlock.py (one run per --out), logs.py (quiet by
default: library logs to a file). Importing this package imports nothing."""
