"""cortexcl.study."""
