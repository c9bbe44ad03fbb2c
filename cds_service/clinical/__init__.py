"""Pure clinical facts: units (UCUM), ketamine exposure (doses in mg, sessions, courses) and findings.

No network, no clock, no Flask: everything takes `now` and data as arguments.
"""
