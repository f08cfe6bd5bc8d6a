"""Artifact stores: a local folder (the same layout as a PVC), pvc://, and s3://.

Every store holds one folder per artifact, named by its content digest, with
``manifest.json`` written last: a reader that finds the manifest finds every file.
"""
