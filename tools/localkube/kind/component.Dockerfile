# One control-plane component as an image, under the name kubeadm expects (registry.k8s.io/…):
# the static binary from the project's cached build on Debian (kube-proxy needs iptables).
# The packages stage needs no binary: `build.py layers` builds it ahead, beside the Go builds.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE} AS packages
ARG PACKAGES=""
RUN if [ -n "$PACKAGES" ]; then apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PACKAGES \
      && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/*; fi
FROM packages
COPY bin/ /usr/local/bin/
