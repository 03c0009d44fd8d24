"""Near-duplicate crawled pages: text -> features (bigrams without a host's learned
boilerplate, SimHash, MinHash) -> PageIndex clusters; pagestore keeps fingerprints durable;
service holds the worker's page flow (ingest, the Redis stream consumer). See ../README.md."""
