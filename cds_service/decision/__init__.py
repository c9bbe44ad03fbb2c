"""The decision layer: decide a hook call the same way everywhere, without Flask.

- ``decide``: (rule set, resources, drafts, hook, now, what was missing) → :class:`Decision` (pure)
- ``call``: a validated CDS Hooks request → gather its data → decide (the service and the warm-up)
- ``catalog``: our services and their prefetch templates, derived from the rules and the hook table
- ``testing``: ``kbladder rules test``, which decides each test case through ``decide``
"""

from cds_service.decision.decide import Decision, decide

__all__ = ["Decision", "decide"]
