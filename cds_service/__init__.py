"""kbladder-cds: CDS Hooks service for ketamine-induced bladder injury."""

__version__ = "0.1.0"
