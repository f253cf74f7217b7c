# Local stand-in for python:3.11-slim-bookworm, which GitHub pulls and these machines cannot:
# Debian's own python3 (3.11) with venv, reachable as python/python3 on /usr/local/bin like the
# official image. Only images/base.py builds it, FROM the debian:bookworm-slim it made, with the
# machine's extra CA certificates in extra-ca/ (an egress proxy's): builds on this machine
# reach PyPI through it, and pip is told to trust the system store.
FROM debian:bookworm-slim
ENV LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && update-ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/* \
 && ln -s /usr/bin/python3 /usr/local/bin/python3 \
 && ln -s /usr/bin/python3 /usr/local/bin/python
CMD ["python3"]
