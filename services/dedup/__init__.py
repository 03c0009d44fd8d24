"""Dedup service: a filesystem duplicate finder with safe actions, and a near-duplicate page worker.

Flow of a scan: walk.py (metadata pass) -> stages.py (size -> head -> tail -> full -> verify)
-> report.py; actions.py acts on a report; hashcache.py makes re-scans cheap. The worker
(worker.py) indexes crawled pages by exact text digest (SHA-256) and SimHash/MinHash.
"""
