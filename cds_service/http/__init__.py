"""Speaks CDS Hooks over HTTP: discovery, hook invocation, feedback, health, JSON errors."""
