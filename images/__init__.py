"""The project's container images: built from their Dockerfiles by our own Docker daemon
(``images/build.py``), on base images made locally under the names the Dockerfiles use."""
