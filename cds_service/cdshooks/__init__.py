"""CDS Hooks wire models and hook definitions (context fields, prefetch tokens), request validation.

Pure Python (no Flask) so the same checks serve the HTTP layer, the CLI and the tests.
"""

from .cards import card_problems, discovery_problems, empty_value_problems, response_problems
from .feedback import Coding, FeedbackItem, OverrideReason, parse_feedback
from .hooks import (
    HOOKS,
    USER_PREFETCH_TOKENS,
    ContextField,
    HookDefinition,
    prefetch_tokens,
    template_problems,
)
from .request import FhirAuthorization, HookRequest, RequestError, parse_hook_request

__all__ = [
    "HOOKS",
    "USER_PREFETCH_TOKENS",
    "Coding",
    "ContextField",
    "FeedbackItem",
    "FhirAuthorization",
    "HookDefinition",
    "HookRequest",
    "OverrideReason",
    "RequestError",
    "card_problems",
    "discovery_problems",
    "empty_value_problems",
    "parse_feedback",
    "parse_hook_request",
    "prefetch_tokens",
    "response_problems",
    "template_problems",
]
