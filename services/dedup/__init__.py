"""Dedup service: duplicate files (`files/`) and near-duplicate pages (`pages/`).

files/: walk.py (metadata pass) -> stages.py (size -> small files by bytes -> head/tail ->
full -> verify) -> report.py, all behind scanner.run_scan (the CLI's `scan` and the worker's
scan jobs); actions.py acts on a report; hashcache.py makes re-scans cheap; watch.py keeps
groups current from inotify. pages/: neardup.PageIndex over boilerplate/SimHash/MinHash
features, pagestore.py, service.py (ingest, stream consumer). Shared: cli.py (the
`python -m services.dedup` entry), worker.py (the FastAPI service of both), metrics.py.
"""
