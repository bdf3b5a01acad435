"""Masking control plane: the policy ``masking:`` section, the catalog, lineage and column plans.

The native engine (``veilgate_native``) applies plans to rows; this package decides, once per
result set, what each column gets.
"""
