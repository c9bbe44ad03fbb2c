"""CDS Hooks wire models and hook definitions (context fields, prefetch tokens), request validation.

Pure Python (no Flask) so the same checks serve the HTTP layer, the CLI and the tests.
"""

from .conformance import card_problems, discovery_problems, empty_value_problems, response_problems
from .feedback_request import Coding, FeedbackItem, OverrideReason, parse_feedback
from .hooks import (
    HOOKS,
    SERVICES,
    USER_PREFETCH_TOKENS,
    ContextField,
    HookDefinition,
    Service,
    drafts_to_evaluate,
    prefetch_tokens,
    service_for,
    template_problems,
)
from .request import FhirAuthorization, HookRequest, RequestError, parse_hook_request

__all__ = [
    "HOOKS",
    "SERVICES",
    "USER_PREFETCH_TOKENS",
    "Coding",
    "ContextField",
    "FeedbackItem",
    "FhirAuthorization",
    "HookDefinition",
    "HookRequest",
    "OverrideReason",
    "RequestError",
    "Service",
    "card_problems",
    "discovery_problems",
    "drafts_to_evaluate",
    "empty_value_problems",
    "parse_feedback",
    "parse_hook_request",
    "prefetch_tokens",
    "response_problems",
    "service_for",
    "template_problems",
]
