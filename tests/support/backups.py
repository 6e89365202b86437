"""Backup helpers for tests."""

from __future__ import annotations

import sys
from pathlib import Path


def runner_script(checkout: Path) -> str:
    """A `vce-backup` that runs the checkout's code (the installed one may be older)."""
    return (
        f"#!/bin/sh\nPYTHONPATH={checkout / 'collections'} exec {sys.executable} "
        '-m ansible_collections.vce.kvm.cli.backup "$@"\n'
    )
