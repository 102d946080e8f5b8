"""The study's figures, one module per chart family over shared notes, titles and colours (``common``): box plots
per quant (``boxes``), the frameworks side by side (``frameworks``), lines over load and context depth
(``levels``), quality against speed or cost (``quality``), and two studies compared (``ratios``).

Which function draws which figure, from which summary file, with which caption and place in the report, is the
catalog's (llmbench/outputs/catalog.py). The plotting stack (altair, vl-convert) is imported by these modules alone.
"""
