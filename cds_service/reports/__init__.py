"""Self-contained HTML reports (back-test, governance): matplotlib charts as inline SVG in Jinja2 pages.

One place for what every report shares — the chart renderer, the page frame and its CSS, table and number
formatting — so each report module only says what it shows. A report is one file with no external
requests (no CDN, no fonts, no scripts), so it can be mailed to a committee and opened offline.

    from cds_service.reports import chart, render
    fig, ax = chart.figure()
    ax.bar(...)
    html = render("my_report.html", package="cds_service.simulate", charts={"x": chart.svg(fig)}, ...)
"""

from cds_service.reports.html import render

__all__ = ["render"]
