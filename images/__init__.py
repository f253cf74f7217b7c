"""Container images for the local cluster, built without Docker (see ``images/build.py``)."""
