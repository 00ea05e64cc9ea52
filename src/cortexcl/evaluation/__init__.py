"""Evaluations of tuned models: encoding scores, transfer, probes, salience, mutual information."""
