"""cortexcl.evaluation."""
