"""Back-test rule sets over a FHIR Bulk Data export on Dask (``kbladder simulate``).

    ndjson    read the export: files per type, partitions, bad lines as file:line
    timeline  replay without look-ahead: the moments to replay, the record as it stood then (pure)
    decision  the one seam to the service's decision path
    replay    one patient, every moment, every rule set (pure)
    pipeline  the two Dask passes (exposure, then patients partitioned by bucket)
    summary   per rule and version: who, when, how often, undecided, sign → card, compare (pure)
    output    summary.json, CSV files, report.html
    command   the CLI edge: options, Dask client, exit status
"""
