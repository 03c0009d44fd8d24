"""Names vulture cannot see used: called by a framework, read by name, or serialised whole.

`make lint` runs vulture over the code together with this file ([tool.vulture] in
pyproject.toml). List a name here only with the reason it is used; delete dead code instead.
"""

# A bare attribute access is how a vulture whitelist marks a name as used:
# ruff: noqa: B018
from typing import Any

_: Any = None

# -- called by a framework or the standard library ----------------------------------------------
_.capture_signals  # uvicorn.Server hook (libs/service/server.py)
_.force_exit  # uvicorn.Server flags read by its main loop
_.should_exit
_.derive  # ExceptionGroup.split()/subgroup() build their parts with it (libs/queues/errors.py)
_.do_GET  # http.server request handler (deploy/launch.py, tests)
_.log_message
_.daemon_threads  # socketserver.ThreadingMixIn option
_.LAST_RESULT  # dedup cli: held, never read, so a one-shot scan exits without freeing it
_.handle_starttag  # html.parser.HTMLParser callback (tests)
_.forward  # torch nn.Module.__call__ (services/inference/model/transformer.py)
_.teardown  # hypothesis RuleBasedStateMachine hook (tests)
_.OperatorUser  # locust runs every HttpUser subclass of a locustfile (loadtests/*.py)
_.IngestUser
_.InteractiveUser
_.BatchUser
_.Generate  # gRPC servicer methods, called by grpc (services/inference/grpc_server.py)
_.Complete
_.Embed
_.Score
_.SubmitJob
_.GetJob
_.CancelJob
_.ListModels
_.error_type  # protobuf message fields, serialised by protobuf
_.error_message
_.content_length  # aiohttp StreamResponse property setter (websim's huge pages)
_._retry_connection  # aiohttp ClientSession's private switch, turned off on purpose (crawler fetcher)

# -- fields serialised whole (asdict, __dict__, __slots__, a JSON body) or read by name ---------
_.robots_fetches  # CrawlStats -> /v1/crawls/{id} "stats"
_.leases_expired
_.discovered
_.kv_used_tokens  # EngineStats -> /v1/admin/state "engine"
_.kv_capacity_tokens
_.mean_logprob  # CandidateScore (TypedDict) -> /v1/score, gRPC Score
_.prob
_.token_logprobs
_.duplicate_copies  # TreeManifest -> the treegen CLI's JSON manifest
_.symlinks
_.sparse
_.odd_names
_.near_misses
_.files_seen  # WalkStats -> the dedup report's "walk" section
_.files_kept
_.filtered
_.symlinks_skipped
_.special_skipped
_.pre_tokenizer  # tokenizers.Tokenizer pipeline parts, set when training a tokenizer
_.post_processor
_.eos_token_id  # transformers' generation_config, read by generate()
_.rchar  # benchmarks' sample fields, read by name and written as JSON
_.completed

# -- used only by modules vulture skips ([tool.vulture] exclude) ----------------------------------
_.pid_of  # loadtests/drills/stack.py, called by the drills' actions

# -- stats fields serialised whole (dataclasses.asdict) and file-protocol methods -----------------
_.leases_reclaimed  # services/crawler/engine.py CrawlStats, reported in the crawl status
_.writable  # io protocol method of the test's disk-full file wrapper
_.offered_rps  # benchmarks/bench_inference.py LevelReport, written whole as JSON (asdict)
_.engine_cpu_window_s
_.steps_per_s  # the same LevelReport, JSON
