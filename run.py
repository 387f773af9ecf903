#!/usr/bin/env python
"""The command line's entry: `python run.py serve|broker|worker|web|keys|predict|build|...` (app/cli/main.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app.cli.main import main

if __name__ == "__main__":
    main()
