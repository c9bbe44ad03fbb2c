"""``python -m bench`` (``make bench``): latency, JSON floor, HTTP throughput, FHIR fallback, rule scaling, RSS.

Every figure is measured in the same run as its baseline and printed in one table with PASS/MISS per target
(docs/performance.md). ``--quick`` runs tiny iterations (the smoke test): the table prints, the numbers mean little.
"""
