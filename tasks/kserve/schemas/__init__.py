"""Vendored KServe CRD schemas (package data; see tests/kserve/vendor_crd_schemas.py)."""
