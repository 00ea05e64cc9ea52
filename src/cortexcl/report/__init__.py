"""cortexcl.report."""
