"""Helpers that tests and benchmarks share, so neither imports the other.

* `net`: free loopback ports and waiting for a listener.
* `dedup_peers`: fdupes, jdupes and rdfind run as independent judges of the dedup engine.
* `neardup_corpus`: a seeded corpus of planted near-duplicate pages with known truth.

Like every lib it knows no service (an import-linter contract): the proofs built on it stay
independent of the code they check. Production code does not import it either.
"""
