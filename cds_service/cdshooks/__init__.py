"""CDS Hooks wire models and hook definitions (context fields, prefetch tokens), request validation."""
