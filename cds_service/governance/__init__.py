"""Governance: the decision log, shadow rule sets, suppression learnt from feedback, reports, rule locks."""
