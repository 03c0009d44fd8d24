"""Duplicate files: walk -> stages (size, small files by their bytes, head/tail, full hash,
byte compare) -> report; actions act on a report (undo log first); watch keeps an index of a
root up to date from inotify; jobs are the worker's `POST /v1/scans`. See ../README.md."""
