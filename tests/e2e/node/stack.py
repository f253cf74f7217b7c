"""The images the node scenarios run, by short name, under the chart's default names.

Why only names: the scenarios run on kind (``tools/localkube/kind/cluster.py``), where the chart is
installed with exactly these references and ``kind load docker-image`` has put them on the node,
so a Pod spec naming one with ``imagePullPolicy: Never`` runs what the Dockerfiles built.
"""

from __future__ import annotations

from images import build as images_build

IMAGES = images_build.image_refs()
