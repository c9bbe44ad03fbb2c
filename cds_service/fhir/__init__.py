"""Speaks FHIR: the client for the EHR's FHIR server (bearer, paging, budget, concurrency),
prefetch handling, and parsing of resources with fhir.resources.
"""
