"""Pure rule engine: rule model, YAML loader with file:line errors, condition building blocks,
evaluation with traces, card building and the rule-test runner. No network, no clock.
"""
