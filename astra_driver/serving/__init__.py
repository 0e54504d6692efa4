"""Serving simulation: requests, workloads, the vLLM v1 scheduling policy and KV cache, the loop, the metrics.

Policy (pure Python, no engine): request.py, workload.py, kv_cache.py, scheduler.py. See docs/serving.md.
"""
