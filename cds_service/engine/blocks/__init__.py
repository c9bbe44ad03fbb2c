"""The building blocks of rule conditions, one module per family, listed once in ``registry.BLOCKS``.

- ``base``: what every block shares (Node/Scope protocols, thresholds, evidence, the ``Block`` record)
- ``filters``: value tests, nearness and ``where`` filters on findings
- ``findings``: count, latest, change, new
- ``exposure``: cumulative_dose, session_rate, infusion_duration, continuous_exposure, new_course,
  draft_order, planned_gap
- ``expression``: fhirpath
- ``logic``: names, all/any/not, ``compile_condition`` and ``implies``
- ``registry``: the table
"""
