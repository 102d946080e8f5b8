"""Logic of the private-LLM benchmark workflow: config, models, builds, backends, statistics, costs, plots.

Rule scripts in ``workflow/scripts/`` are thin shells around these modules; the tests import them directly.
"""
