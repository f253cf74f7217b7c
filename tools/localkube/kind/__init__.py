"""A kind cluster here: kind, kubeadm, crictl and a node image built and cached
(:mod:`localkube.kind.build`), and the cluster's life (:mod:`localkube.kind.cluster`: up with the
repo's Dockerfile images loaded and the chart installed, down, and a suite run against it).

Import the submodules: they use the repo's image tooling (``images/``, importable from the
repository root), which the rest of localkube does not need.
"""
